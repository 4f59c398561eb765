"""What the host CPU gives the C++ kernels: the share of the last-level cache that the threads in
use can count on (which decides the per-sample forward), and the ISA flags that a
``-march=native`` build depends on. Read from Linux sysfs/procfs, with fallbacks elsewhere."""
import functools
import os
import platform
from dataclasses import dataclass
from typing import List, Optional

SYSFS_CPU = "/sys/devices/system/cpu"
PROC_CPUINFO = "/proc/cpuinfo"
DEFAULT_LLC_BYTES = 8 << 20  # where sysfs cannot be read
# No mainstream CPU gives one core more than this much last-level cache. A VM that reports the
# whole socket's cache and lists only its own vCPUs as sharers would otherwise claim all of it.
MAX_LLC_PER_CPU = 32 << 20
_UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


@dataclass(frozen=True)
class Cache:
    level: int
    size: int     # bytes
    sharers: int  # logical CPUs that share it (shared_cpu_list)


def parse_size(text: str) -> int:
    """sysfs's cache size ("32768K", "1M", "512") in bytes."""
    text = text.strip()
    if text and text[-1].upper() in _UNITS:
        return int(text[:-1]) * _UNITS[text[-1].upper()]
    return int(text)


def parse_cpu_list(text: str) -> int:
    """How many CPUs a sysfs CPU list ("0-3,8,10-11") names."""
    count = 0
    for part in text.strip().split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        count += int(hi or lo) - int(lo) + 1
    return count


def _read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def caches(root: str = SYSFS_CPU, cpu: int = 0) -> List[Cache]:
    """The data/unified caches of one CPU as sysfs describes them (empty where it does not)."""
    d = os.path.join(root, f"cpu{cpu}", "cache")
    out = []
    for name in sorted(os.listdir(d)) if os.path.isdir(d) else []:
        p = os.path.join(d, name)
        try:
            if _read(os.path.join(p, "type")) == "Instruction":
                continue
            try:
                sharers = parse_cpu_list(_read(os.path.join(p, "shared_cpu_list")))
            except OSError:  # older kernels: assume the cache is the CPU's own
                sharers = 1
            out.append(Cache(int(_read(os.path.join(p, "level"))), parse_size(_read(os.path.join(p, "size"))),
                             max(1, sharers)))
        except (OSError, ValueError):
            continue
    return out


@functools.lru_cache(maxsize=None)
def last_level_cache(root: str = SYSFS_CPU) -> Optional[Cache]:
    """The highest-level data cache of CPU 0 (the largest one at that level), or None."""
    found = caches(root)
    return max(found, key=lambda c: (c.level, c.size)) if found else None


def llc_bytes(threads: int, root: str = SYSFS_CPU) -> int:
    """Bytes of last-level cache that ``threads`` threads can count on: each CPU's share of the
    cache (its size over the CPUs sharing it, at most :data:`MAX_LLC_PER_CPU`) times the threads,
    at most the whole cache. ``CBAM_LLC_BYTES`` overrides it (tests, or a host that misreports)."""
    env = os.environ.get("CBAM_LLC_BYTES")
    if env:
        return int(float(env))
    c = last_level_cache(root)
    if c is None:
        return DEFAULT_LLC_BYTES
    per_cpu = min(c.size // c.sharers, MAX_LLC_PER_CPU)
    return min(c.size, per_cpu * max(1, threads))


def cpu_flags(path: str = PROC_CPUINFO) -> str:
    """The ISA feature flags of the first CPU in /proc/cpuinfo ("flags" on x86, "Features" on
    Arm), sorted; the machine name where the file has none."""
    try:
        with open(path) as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep and key.strip().lower() in ("flags", "features"):
                    return " ".join(sorted(set(value.split())))
    except OSError:
        pass
    return platform.machine()


# ISA flags of CPUs that compute in bfloat16 natively (x86: AVX512-BF16, AMX; Arm: BF16 / SVE-BF16).
# Without one, torch's CPU bf16 kernels convert through float32 and bf16 autocast runs several times
# slower than float32 (ResNet-20 on an AVX2 EPYC: 12x, `cbam bench`).
BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16", "svebf16")


def native_bf16(flags: Optional[str] = None) -> bool:
    """Whether the CPU (``flags``: the host's from /proc/cpuinfo by default) has bfloat16 arithmetic."""
    have = set((cpu_flags() if flags is None else flags).split())
    return any(f in have for f in BF16_FLAGS)


# The compiler's predefined macros for the x86 extensions the kernels (or gcc's own code for a target)
# may use, and the /proc/cpuinfo flag that says the CPU has each.
ISA_MACROS = {"__SSE4_2__": "sse4_2", "__AVX__": "avx", "__AVX2__": "avx2", "__FMA__": "fma", "__F16C__": "f16c",
              "__BMI2__": "bmi2", "__AVX512F__": "avx512f", "__AVX512BW__": "avx512bw",
              "__AVX512DQ__": "avx512dq", "__AVX512VL__": "avx512vl", "__AVX512VNNI__": "avx512_vnni",
              "__AVX512BF16__": "avx512_bf16", "__AVX512FP16__": "avx512_fp16", "__AMX_TILE__": "amx_tile"}


def missing_isa(macros: str, flags: str) -> List[str]:
    """The CPU flags a compile target needs (``macros``: the compiler's ``-dM -E`` output for it) that
    the CPU (``flags``) lacks, sorted."""
    defined = {line.split()[1] for line in macros.splitlines() if line.startswith("#define ") and len(line.split()) > 1}
    have = set(flags.split())
    return sorted({f for m, f in ISA_MACROS.items() if m in defined and f not in have})


def vector_family(macros: str) -> str:
    """The kernels' vector family for a compile target (``macros``: the compiler's ``-dM -E`` output), as
    the csrc headers select it: "avx512", "avx2" or "generic"."""
    defined = {line.split()[1] for line in macros.splitlines() if line.startswith("#define ") and len(line.split()) > 1}
    if "__AVX512F__" in defined:
        return "avx512"
    return "avx2" if {"__AVX2__", "__FMA__"} <= defined else "generic"


def other_runnable_march(flags: Optional[str] = None, machine: Optional[str] = None) -> Optional[str]:
    """A gcc ``-march`` whose kernels this x86 CPU can run but its native build leaves out: the AVX2
    family (haswell) on an AVX-512 CPU, the generic loops (x86-64) on one without; None elsewhere.
    The test script runs the kernel tests a second time on it."""
    if (platform.machine() if machine is None else machine) not in ("x86_64", "AMD64"):
        return None
    have = set((cpu_flags() if flags is None else flags).split())
    if "avx512f" in have and {"avx2", "fma", "f16c", "bmi2"} <= have:
        return "haswell"
    return "x86-64"
