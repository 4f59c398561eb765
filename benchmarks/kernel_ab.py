"""Benchmark command: the C++ kernels of a git revision against the working tree's, in one process.

`python benchmarks/kernel_ab.py --base REV [--reps 15] [--dtypes float32,bfloat16] [--shapes 8x256x56x56,...] [--aa]`
builds REV's ``src/cbam/ops/csrc`` as a second extension (the same compile flags and ``-march``,
``CBAM_CPU_MARCH`` included; its own name) and times ``CBAM.forward_tail`` at ResNet-20's stage
shapes (batch 128; ``--shapes`` for others) with each build in turn, in
interleaved rounds, inference and forward+backward, NCHW and channels_last. It prints the median of
the per-round ratios new / base and their middle half: a kernel change's effect, with the machine's
drift cancelled. ``--aa`` times the base build against itself, the spread such a ratio shows with no
change at all. The Python side is the working tree's for both builds, so REV's kernels must take the
same arguments (a changed kernel signature fails with pybind's error naming the call).
"""
import argparse
import os
import re
import subprocess
import tempfile
from typing import Callable, Dict, List

import torch
from torch.utils.cpp_extension import load

import cbam
from cbam.bench import round_times
from cbam.ops import _cpu

SHAPES = ((128, 16, 28, 28), (128, 32, 14, 14), (128, 64, 7, 7))
LAYOUTS = {"NCHW": torch.contiguous_format, "channels_last": torch.channels_last}
CSRC = "src/cbam/ops/csrc"


def build_at(rev: str, root: str) -> object:
    """REV's kernels, extracted with ``git archive`` and compiled under a name of their own."""
    sha = subprocess.run(["git", "-C", root, "rev-parse", "--short=12", rev], check=True, capture_output=True,
                         text=True).stdout.strip()
    march = _cpu.target_march()
    name = f"cbam_kernel_ab_{sha}_{re.sub(r'[^A-Za-z0-9]', '_', march)}"
    out = os.path.join(tempfile.gettempdir(), name)
    if not os.path.isdir(os.path.join(out, CSRC)):
        os.makedirs(out, exist_ok=True)
        tar = subprocess.run(["git", "-C", root, "archive", sha, CSRC], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", out], input=tar, check=True)
    src = [os.path.join(out, CSRC, f) for f in _cpu.SOURCES]
    return load(name, src, extra_cflags=_cpu.cflags(march), extra_ldflags=["-fopenmp"], verbose=False)


def _step(m: torch.nn.Module, shape, dtype: torch.dtype, fmt: torch.memory_format, train: bool, kernels: object
          ) -> Callable[[], None]:
    x, idn, g = (torch.randn(shape).to(dtype).contiguous(memory_format=fmt) for _ in range(3))
    xg = x.clone().requires_grad_()

    def call() -> None:
        _cpu._mod = kernels  # the loaded extension that kernels_for hands out
        if train:
            xg.grad = None
            m.forward_tail(xg, idn).backward(g)
        else:
            with torch.no_grad():
                m.forward_tail(x, idn)
    return call


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True, help="git revision whose kernels are the baseline (e.g. HEAD~1)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--shapes", default=",".join("x".join(map(str, s)) for s in SHAPES),
                    help="comma-separated NxCxHxW shapes (default: ResNet-20's stages at batch 128)")
    ap.add_argument("--aa", action="store_true", help="base against itself: the spread with no change")
    a = ap.parse_args()
    try:
        shapes = [tuple(int(v) for v in s.split("x")) for s in a.shapes.split(",")]
        if any(len(s) != 4 or min(s) < 1 for s in shapes):
            raise ValueError
    except ValueError:
        ap.error(f"--shapes takes comma-separated NxCxHxW shapes of positive sizes, e.g. 8x256x56x56; got {a.shapes!r}")
    bad = [d for d in a.dtypes.split(",") if d not in ("float32", "bfloat16", "float16")]
    if bad:
        ap.error(f"--dtypes takes float32, bfloat16 and float16, comma-separated; got {', '.join(bad)}")
    new = tree = _cpu.load()
    if tree is None:
        raise SystemExit(f"kernel_ab: the working tree's C++ kernels do not build here ({_cpu.error()})")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    base = build_at(a.base, root)
    if a.aa:
        new = base
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    print(f"{a.threads} threads; {'base vs itself (A/A)' if a.aa else 'working tree vs ' + a.base}; ratio = new / "
          f"base per round, median and middle half of {a.reps} interleaved rounds\n")
    print("| shape | layout | dtype | inference new / base | middle half | fwd+bwd new / base | middle half |")
    print("|---|---|---|---:|---:|---:|---:|")
    try:
        for shape in shapes:
            m = cbam.CBAM(shape[1])
            for lay, fmt in LAYOUTS.items():
                for name in a.dtypes.split(","):
                    cells: List[str] = []
                    for train in (False, True):
                        fns: Dict[str, Callable[[], None]] = {
                            k: _step(m, shape, getattr(torch, name), fmt, train, K) for k, K in (("new", new),
                                                                                                ("base", base))}
                        t = round_times(fns, a.reps, torch.device("cpu"))
                        r = sorted(n / b for n, b in zip(t["new"], t["base"]))
                        cells += [f"{r[len(r) // 2]:.3f}", f"{r[len(r) // 4]:.3f} .. {r[3 * len(r) // 4]:.3f}"]
                    print(f"| {'x'.join(map(str, shape))} | {lay} | {name} | " + " | ".join(cells) + " |", flush=True)
    finally:
        _cpu._mod = tree


if __name__ == "__main__":
    main()
