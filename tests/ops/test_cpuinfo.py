"""The cache share and CPU flags the C++ kernels are tuned and built for, read from fake sysfs and
procfs trees: the results must not depend on the machine the tests run on."""
import os
import types

import pytest
import torch.utils.cpp_extension

from cbam.ops import _cpu
from cbam.ops import _cpuinfo as CI

MiB = 1 << 20


def _sysfs(root, caches, cpu=0):
    """A fake /sys/devices/system/cpu with cpu<cpu>/cache/index<i>/{level,type,size,shared_cpu_list}."""
    for i, (level, kind, size, shared) in enumerate(caches):
        d = root / f"cpu{cpu}" / "cache" / f"index{i}"
        d.mkdir(parents=True)
        for name, value in (("level", level), ("type", kind), ("size", size), ("shared_cpu_list", shared)):
            if value is not None:
                (d / name).write_text(f"{value}\n")
    return str(root)


def _private(l2="1024K"):
    return [(1, "Data", "32K", "0"), (1, "Instruction", "32K", "0"), (2, "Unified", l2, "0")]


@pytest.fixture(autouse=True)
def _no_override(monkeypatch):
    monkeypatch.delenv("CBAM_LLC_BYTES", raising=False)


def test_amd_like_l3_shared_by_both_cpus(tmp_path):
    root = _sysfs(tmp_path, _private() + [(3, "Unified", "32768K", "0-1")])
    assert CI.last_level_cache(root) == CI.Cache(3, 32 * MiB, 2)
    assert CI.llc_bytes(1, root) == 16 * MiB  # one thread: its CPU's half
    assert CI.llc_bytes(2, root) == 32 * MiB
    assert CI.llc_bytes(8, root) == 32 * MiB  # never more than the whole cache


def test_intel_like_socket_cache_is_shared_per_cpu(tmp_path):
    """A 480 MiB L3 shared by 96 CPUs: two threads get 10 MiB of it, not the socket's 480."""
    root = _sysfs(tmp_path, _private("2048K") + [(3, "Unified", "491520K", "0-47,96-143")])
    assert CI.last_level_cache(root).sharers == 96
    assert CI.llc_bytes(2, root) == 10 * MiB
    assert CI.llc_bytes(96, root) == 480 * MiB


def test_vm_listing_only_its_own_cpus_is_capped_per_cpu(tmp_path):
    root = _sysfs(tmp_path, _private() + [(3, "Unified", "480M", "0-1")])
    assert CI.llc_bytes(2, root) == 2 * CI.MAX_LLC_PER_CPU < 480 * MiB


def test_missing_or_partial_sysfs(tmp_path):
    assert CI.llc_bytes(2, str(tmp_path / "nothing")) == CI.DEFAULT_LLC_BYTES
    # no shared_cpu_list (old kernels): the cache counts as the CPU's own; unreadable sizes are skipped
    root = _sysfs(tmp_path / "old", _private() + [(3, "Unified", "8M", None), (4, "Unified", "lots", "0")])
    assert CI.last_level_cache(root) == CI.Cache(3, 8 * MiB, 1)
    assert CI.llc_bytes(4, root) == 8 * MiB


def test_env_overrides_the_host(tmp_path, monkeypatch):
    root = _sysfs(tmp_path, _private() + [(3, "Unified", "32M", "0-1")])
    monkeypatch.setenv("CBAM_LLC_BYTES", str(3 * MiB))
    assert CI.llc_bytes(1, root) == CI.llc_bytes(64, root) == 3 * MiB


@pytest.mark.parametrize("text, n", [("0", 1), ("0-1", 2), ("0-3,8,10-11", 7), ("0-47,96-143\n", 96)])
def test_cpu_list(text, n):
    assert CI.parse_cpu_list(text) == n


@pytest.mark.parametrize("text, n", [("32K", 32 << 10), ("1M", MiB), ("2G", 2 << 30), ("4096", 4096)])
def test_size(text, n):
    assert CI.parse_size(text) == n


def test_cpu_flags_from_x86_and_arm_cpuinfo(tmp_path):
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nmodel name\t: X\nflags\t\t: sse2 avx2 fma avx2\n\nprocessor\t: 1\n"
                   "flags\t\t: sse2\n")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd sve\nCPU implementer\t: 0x41\n")
    assert CI.cpu_flags(str(x86)) == "avx2 fma sse2"  # the first CPU's, sorted, once each
    assert CI.cpu_flags(str(arm)) == "asimd fp sve"
    assert CI.cpu_flags(str(tmp_path / "none")) == os.uname().machine


def test_host_values_are_sane():
    assert CI.llc_bytes(1) >= 1 << 16
    assert CI.cpu_flags()


def test_build_is_keyed_by_cpu_flags():
    """-march=native code from an AVX-512 machine must not be loaded on one without it."""
    a = _cpu.build_name("sse2 avx2 avx512f")
    assert a == _cpu.build_name("avx512f sse2  avx2 avx2")  # the same set of flags
    assert a != _cpu.build_name("sse2 avx2")
    assert a.isidentifier() and a.startswith("cbam_cpu_kernels_")
    assert _cpu.build_name() == _cpu.build_name(CI.cpu_flags())


def test_load_builds_under_the_keyed_name(monkeypatch):
    seen = {}

    def fake_load(name, sources, **kwargs):
        seen.update(name=name, sources=sources)
        return types.SimpleNamespace(set_cache_limit=lambda n: None)

    monkeypatch.setattr(torch.utils.cpp_extension, "load", fake_load)
    monkeypatch.setattr(CI, "cpu_flags", lambda path=CI.PROC_CPUINFO: "fp asimd sve")
    monkeypatch.setattr(_cpu, "_mod", None)
    monkeypatch.setattr(_cpu, "_failed", None)
    monkeypatch.delenv("CBAM_DISABLE_CPP", raising=False)
    monkeypatch.delenv(_cpu.MARCH_ENV, raising=False)
    assert _cpu.load() is not None
    assert seen["name"] == _cpu.build_name("asimd fp sve")
    assert seen["sources"] and all(os.path.isfile(f) for f in seen["sources"])


def test_native_bf16_reads_the_isa_flags():
    """bf16 arithmetic from AVX512-BF16, AMX or Arm's BF16; an AVX2 or plain AVX-512 CPU has none."""
    assert CI.native_bf16("sse2 avx2 avx512f avx512_bf16")
    assert CI.native_bf16("avx2 amx_tile amx_bf16")
    assert CI.native_bf16("fp asimd bf16")
    assert not CI.native_bf16("sse2 avx2 fma f16c")
    assert not CI.native_bf16("avx2 avx512f avx512bw")
    assert CI.native_bf16() == CI.native_bf16(CI.cpu_flags())


def test_missing_isa_names_the_flags_a_target_needs():
    macros = "#define __x86_64__ 1\n#define __SSE4_2__ 1\n#define __AVX2__ 1\n#define __FMA__ 1\n"
    assert CI.missing_isa(macros, "sse4_2 avx2 fma") == []
    assert CI.missing_isa(macros, "sse4_2 avx") == ["avx2", "fma"]
    assert CI.missing_isa("#define __AVX512F__ 1\n#define __AVX512BW__ 1", "avx2 avx512f") == ["avx512bw"]


def test_vector_family_follows_the_headers_choice():
    assert CI.vector_family("#define __AVX512F__ 1\n#define __AVX2__ 1\n#define __FMA__ 1") == "avx512"
    assert CI.vector_family("#define __AVX2__ 1\n#define __FMA__ 1") == "avx2"
    assert CI.vector_family("#define __AVX2__ 1") == "generic"  # AVX2 without FMA: the generic loops
    assert CI.vector_family("#define __SSE2__ 1") == "generic"


def test_other_runnable_march_is_a_family_this_cpu_runs():
    assert CI.other_runnable_march("sse2 avx2 fma f16c bmi2 avx512f", "x86_64") == "haswell"
    assert CI.other_runnable_march("sse2 avx2 fma f16c bmi2", "x86_64") == "x86-64"
    assert CI.other_runnable_march("sse2 avx512f", "x86_64") == "x86-64"  # no AVX2 flags: not haswell
    assert CI.other_runnable_march("fp asimd", "aarch64") is None


def test_target_march_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv(_cpu.MARCH_ENV, raising=False)
    assert _cpu.target_march() == "native"
    monkeypatch.setenv(_cpu.MARCH_ENV, " haswell ")
    assert _cpu.target_march() == "haswell"
    monkeypatch.setenv(_cpu.MARCH_ENV, "haswell -O0")
    with pytest.raises(ValueError, match="not a gcc -march name"):
        _cpu.target_march()
    assert _cpu.build_name("avx2 fma", "haswell") != _cpu.build_name("avx2 fma")


def test_a_target_this_cpu_cannot_run_is_refused(monkeypatch, caplog):
    built = []
    monkeypatch.setattr(torch.utils.cpp_extension, "load", lambda *a, **k: built.append(a))
    monkeypatch.setattr(_cpu, "target_macros", lambda march: "#define __AVX2__ 1\n#define __AVX512F__ 1\n")
    monkeypatch.setattr(CI, "cpu_flags", lambda path=CI.PROC_CPUINFO: "sse2 avx avx2 fma")
    monkeypatch.setattr(_cpu, "_mod", None)
    monkeypatch.setattr(_cpu, "_failed", None)
    monkeypatch.delenv("CBAM_DISABLE_CPP", raising=False)
    monkeypatch.setenv(_cpu.MARCH_ENV, "skylake-avx512")
    assert _cpu.load() is None and not built
    assert "CBAM_CPU_MARCH=skylake-avx512 needs avx512f" in _cpu.error()


def test_the_kernels_are_built_for_the_requested_target():
    """Under CBAM_CPU_MARCH (the test script's second pass over the kernel tests) the kernels must load
    and be of that target's vector family: a silent fallback to the torch kernels would pass every
    other test without running the family under test."""
    march = _cpu.target_march()
    mod = _cpu.load()
    if mod is None:
        if march != "native":
            pytest.fail(f"CBAM_CPU_MARCH={march}: the kernels did not build: {_cpu.error()}")
        pytest.skip(f"no C++ kernels here: {_cpu.error()}")
    assert mod.vector_isa() == CI.vector_family(_cpu.target_macros(march))
