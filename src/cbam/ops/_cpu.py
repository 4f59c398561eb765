"""The C++ kernels, compiled on first use with the local gcc and cached by torch."""
import hashlib
import logging
import os
import re
import shutil
import subprocess
import threading
from types import ModuleType
from typing import List, Optional

from . import _cpuinfo

_log = logging.getLogger(__name__)
_lock = threading.Lock()
_mod: Optional[ModuleType] = None
_failed: Optional[str] = None

SOURCES = ("cbam_cpu.cpp", "cbam_sample.cpp", "sample_backward.cpp", "mlp_cpu.cpp", "out_cache.cpp", "eager.cpp")
MARCH_ENV = "CBAM_CPU_MARCH"


def cflags(march: str = "native") -> List[str]:
    """The compile flags for a gcc ``-march`` target. The default, native, builds for the host's own
    ISA; the build is keyed by the CPU's flags (build_name), so it only runs on CPUs of the type it was
    compiled on. The relaxed-associativity flags let gcc vectorise the float reductions."""
    return ["-O3", f"-march={march}", "-fopenmp", "-fno-math-errno", "-fassociative-math", "-fno-signed-zeros",
            "-fno-trapping-math"]


CFLAGS = cflags()


def target_march() -> str:
    """The ``-march`` the kernels build for: ``CBAM_CPU_MARCH`` if set (a gcc target this CPU can run:
    ``haswell`` on an AVX-512 machine builds and runs the AVX2 kernels, ``x86-64`` the generic loops,
    e.g. to test those paths or to measure them), else ``native``."""
    m = os.environ.get(MARCH_ENV, "").strip() or "native"
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+-]*", m):
        raise ValueError(f"{MARCH_ENV}={m!r} is not a gcc -march name (e.g. haswell, skylake-avx512, x86-64, "
                         f"native); unset it to build for this CPU")
    return m


def build_name(cpu_flags: Optional[str] = None, march: str = "native") -> str:
    """The extension's name, which names its build directory in torch's extension cache: keyed by the
    CPU's ISA flags (``cpu_flags``; the host's from /proc/cpuinfo by default) and the compile flags
    (``march`` among them). A cache in a home directory shared by machines of different CPU types
    would otherwise hand an AVX-512 binary to a CPU without it. Source edits need no key: ninja
    rebuilds what changed."""
    flags = " ".join(sorted(set((_cpuinfo.cpu_flags() if cpu_flags is None else cpu_flags).split())))
    key = hashlib.sha256(f"{flags}\n{' '.join(cflags(march))}".encode()).hexdigest()[:16]
    return f"cbam_cpu_kernels_{key}"


def target_macros(march: str) -> str:
    """The compiler's predefined macros for ``-march=march`` (``-dM -E``): the ISA it may use."""
    cxx = shutil.which(os.environ.get("CXX", "c++"))
    if cxx is None:
        raise RuntimeError("no C++ compiler (c++ or $CXX) on PATH")
    p = subprocess.run([cxx, f"-march={march}", "-dM", "-E", "-x", "c++", os.devnull], capture_output=True,
                       text=True, timeout=60)
    if p.returncode != 0:
        raise ValueError(f"{MARCH_ENV}={march}: the compiler rejects it: {p.stderr.strip().splitlines()[-1:]}")
    return p.stdout


def _check_target(march: str) -> None:
    """A named ``-march`` must not use an instruction this CPU lacks (the binary would die of SIGILL):
    the target's ISA, from the compiler's predefined macros, must be among the CPU's flags."""
    missing = _cpuinfo.missing_isa(target_macros(march), _cpuinfo.cpu_flags())
    if missing:
        raise ValueError(f"{MARCH_ENV}={march} needs {', '.join(missing)}, which this CPU lacks; pick a target "
                         f"this CPU can run (e.g. haswell for AVX2, x86-64 for no vector extensions) or unset it")


def _build() -> ModuleType:
    from torch.utils.cpp_extension import load as _load
    march = target_march()
    if march != "native":
        _check_target(march)
    d = os.path.join(os.path.dirname(__file__), "csrc")
    src: List[str] = [os.path.join(d, f) for f in SOURCES]
    return _load(build_name(march=march), src, extra_cflags=cflags(march), extra_ldflags=["-fopenmp"],
                 verbose=False)


def load() -> Optional[ModuleType]:
    """The compiled module, or None when it cannot be built here (the reason is in :func:`error`)."""
    global _mod, _failed
    if _mod is not None or _failed is not None:
        return _mod
    if os.environ.get("CBAM_DISABLE_CPP"):
        _failed = "disabled by CBAM_DISABLE_CPP"
        return None
    with _lock:
        if _mod is None and _failed is None:
            try:
                _mod = _build()
                if os.environ.get("CBAM_OUTPUT_CACHE_MB"):
                    _mod.set_cache_limit(int(float(os.environ["CBAM_OUTPUT_CACHE_MB"]) * (1 << 20)))
            except Exception as e:  # no compiler, no headers, ...: fall back to torch kernels
                _failed = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                _log.warning("cbam: C++ kernels unavailable (%s); using torch kernels", _failed)
    return _mod


def loaded() -> Optional[ModuleType]:
    """The compiled module if it has been loaded already (never builds)."""
    return _mod


def error() -> Optional[str]:
    return _failed


# The cache of the fused op's full-size outputs (csrc/out_cache.cpp): like CUDA's caching allocator,
# freed outputs (y, dx, the MLP backward's buffers) of >= 256 KiB are kept, up to a byte limit (1 GiB;
# CBAM_OUTPUT_CACHE_MB sets it, 0 turns the cache off), and the next output of the same size reuses
# one without page faults. Past the limit, the least recently freed blocks are dropped first.

def empty_output_cache() -> int:
    """Frees the fused op's cached output buffers; returns the bytes released (0 without C++ kernels)."""
    mod = load()
    return 0 if mod is None else int(mod.empty_cache())


def output_cache_bytes() -> int:
    """Bytes the fused op's output cache holds now."""
    mod = load()
    return 0 if mod is None else int(mod.cached_bytes())


def set_output_cache_limit(nbytes: int) -> None:
    """The most bytes the output cache keeps (0 disables it and frees what it holds)."""
    if nbytes < 0:
        raise ValueError(f"set_output_cache_limit: the limit must be >= 0 bytes, got {nbytes}")
    mod = load()
    if mod is not None:
        mod.set_cache_limit(int(nbytes))
