"""The kernels' sources compile for the x86 ISA this machine does not build: an AVX2 host checks the
AVX-512 specialisations and an AVX-512 host the AVX2 ones (csrc/*_avx2.h), which its own -march=native
build leaves out, so an edit cannot break the other family unnoticed; baseline x86-64 (no AVX) as well. Semantic check only
(-fsyntax-only instantiates the templates but emits no code); running them needs such a CPU."""
import os
import platform
import shutil
import subprocess
import sysconfig

import pytest

from cbam.ops import _cpu, _cpuinfo

CSRC = os.path.join(os.path.dirname(_cpu.__file__), "csrc")


def _other_march(flags: str) -> str:
    return "haswell" if "avx512f" in flags.split() else "skylake-avx512"


def test_other_march_is_the_family_not_built_here():
    assert _other_march("sse2 avx2 fma avx512f") == "haswell"
    assert _other_march("sse2 avx2 fma f16c") == "skylake-avx512"


@pytest.mark.slow
@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86 ISA variants only")
def test_sources_compile_for_the_other_x86_family():
    from torch.utils.cpp_extension import include_paths
    cxx = shutil.which(os.environ.get("CXX", "c++"))
    if cxx is None:
        pytest.skip("no C++ compiler: the kernels cannot build here")
    inc = [a for p in include_paths() + [sysconfig.get_paths()["include"]] for a in ("-isystem", p)]
    # the other vector family, and baseline x86-64 (no AVX: the generic loops and the stubs alone)
    for march in (_other_march(_cpuinfo.cpu_flags()), "x86-64"):
        for src in ("cbam_sample.cpp", "sample_backward.cpp"):
            p = subprocess.run([cxx, "-std=c++17", "-fsyntax-only", f"-march={march}", "-fopenmp", *inc,
                                os.path.join(CSRC, src)], capture_output=True, text=True, timeout=300)
            assert p.returncode == 0, f"{src}, -march={march}:\n{p.stderr[-3000:]}"
