"""A regular (non-editable) install: the wheel carries every C++ source and header, and the kernels
build from the installed copy. The editable install the tests otherwise run from reads csrc/ in the
checkout, so it cannot see a file missing from the package data."""
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from typing import Dict, List

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CSRC = os.path.join(ROOT, "src", "cbam", "ops", "csrc")
_INCLUDE = re.compile(r'^\s*#\s*include\s*"([^"]+)"', re.M)


def _pip(*args: str, cwd: str) -> None:
    # offline, and with this environment's setuptools: no index is consulted
    p = subprocess.run([sys.executable, "-m", "pip", *args, "--no-deps", "--no-index", "--no-build-isolation",
                        "--disable-pip-version-check", "-q"], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> str:
    """The package built into a wheel from a copy of the checkout (the build leaves build/ and
    egg-info behind) and pip-installed into a --target folder; returns that folder."""
    pytest.importorskip("setuptools", minversion="77")  # SPDX license strings
    tmp = tmp_path_factory.mktemp("install")
    tree = tmp / "tree"
    tree.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(os.path.join(ROOT, name), tree / name)
    shutil.copytree(os.path.join(ROOT, "src"), tree / "src",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "*.so"))
    _pip("wheel", "-w", str(tmp / "dist"), ".", cwd=str(tree))
    (wheel,) = (tmp / "dist").glob("cbam-*.whl")
    with zipfile.ZipFile(wheel) as z:
        shipped = {os.path.basename(n) for n in z.namelist() if n.startswith("cbam/ops/csrc/")}
    assert shipped >= {f for f in os.listdir(CSRC) if f.endswith((".cpp", ".h"))}
    _pip("install", "--target", str(tmp / "site"), str(wheel), cwd=str(tmp))
    return str(tmp / "site")


def _run_installed(site: str, code: str, env: Dict[str, str]) -> str:
    """Runs ``code`` in a fresh interpreter that imports cbam from ``site`` (torch from this env)."""
    env = dict(os.environ, PYTHONPATH=site, OMP_NUM_THREADS="1", **env)
    p = subprocess.run([sys.executable, "-c", code], cwd=site, env=env, capture_output=True, text=True,
                       timeout=900)
    assert p.returncode == 0, p.stderr[-4000:]
    return p.stdout.strip().splitlines()[-1]


# load() from the installed package, with torch's compile step replaced by a recorder
_RECORD = """
import json, cbam, torch.utils.cpp_extension as ext
from cbam.ops import _cpu
seen = {}
ext.load = lambda name, sources, **kw: seen.update(name=name, sources=sources, cflags=kw["extra_cflags"]) or _cpu
_cpu.load()
print(json.dumps(dict(seen, cbam=cbam.__file__)))
"""


def test_installed_sources_and_their_includes_resolve(installed):
    """Every C++ file load() would compile is in the installed package, and every ``#include`` in
    them resolves there: preprocessing them with torch's include paths must succeed."""
    import torch.utils.cpp_extension as ext
    got = json.loads(_run_installed(installed, _RECORD, {}))
    assert got["cbam"].startswith(installed)
    sources: List[str] = got["sources"]
    assert sources and all(s.startswith(installed) and os.path.isfile(s) for s in sources)
    csrc = os.path.dirname(sources[0])
    for f in os.listdir(csrc):  # our own includes, file by file (headers include headers)
        with open(os.path.join(csrc, f)) as fh:
            for inc in _INCLUDE.findall(fh.read()):
                assert os.path.isfile(os.path.join(csrc, inc)), f"{f}: #include \"{inc}\" is not installed"
    cxx = shutil.which(os.environ.get("CXX", "c++"))
    if cxx is None:
        pytest.skip("no C++ compiler: the kernels cannot build here")
    inc = [a for p in ext.include_paths() + [sysconfig.get_paths()["include"]] for a in ("-isystem", p)]
    for src in sources:  # -MM: include resolution only, no compile; system headers left out
        p = subprocess.run([cxx, "-MM", "-std=c++20", *inc, src], capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr[-3000:]
        deps = p.stdout.replace("\\\n", " ").split(":", 1)[1].split()
        assert all(d.startswith(csrc) for d in deps), deps


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("CBAM_TEST_INSTALL_BUILD"),
                    reason="compiles the kernels from scratch (1-4 min on 2 cores); set CBAM_TEST_INSTALL_BUILD=1")
def test_installed_kernels_build_and_run(installed, tmp_path):
    code = ("import torch, cbam\nfrom cbam.ops import _cpu, backend_name\n"
            "m = _cpu.load(); assert m is not None, _cpu.error()\n"
            "x = torch.randn(2, 16, 5, 5)\n"
            "y = cbam.CBAM(16, impl='fused').eval()(x)\n"
            "print(m.__file__, backend_name(x), y.shape == x.shape)")
    out = _run_installed(installed, code, {"TORCH_EXTENSIONS_DIR": str(tmp_path / "ext")})
    so, backend, ok = out.split()
    assert so.startswith(str(tmp_path / "ext")) and backend == "cpp" and ok == "True"
