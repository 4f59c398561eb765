"""Benchmark command: what CBAM's fused block tail costs over the tail it replaces, per layer.

`python benchmarks/tail_cost.py [--threads 2] [--reps 15] [--dtypes float32,bfloat16,float16]`
times ``CBAM.forward_tail(x, identity)`` (the fused ``relu(cbam(x) + identity)``) against the plain
block's ``relu(x + identity)`` at ResNet-20's three stage shapes (batch 128), in NCHW and
channels_last, inference and forward+backward, and prints the ratio of the two measured in the same
rounds: the per-layer price of the attention in a small network, Python and autograd included.
A last line times both on a 2x16x4x4 input, where the per-call costs are all there is.
"""
import argparse
from typing import Callable, Dict

import torch

import cbam
from cbam.bench import timed_rounds

SHAPES = ((128, 16, 28, 28), (128, 32, 14, 14), (128, 64, 7, 7))
LAYOUTS = {"NCHW": torch.contiguous_format, "channels_last": torch.channels_last}


def _calls(m: torch.nn.Module, shape, dtype: torch.dtype, fmt: torch.memory_format) -> Dict[str, Callable]:
    x, idn, g = (torch.randn(shape).to(dtype).contiguous(memory_format=fmt) for _ in range(3))
    xg, ig = x.clone().requires_grad_(), idn.clone().requires_grad_()

    def fused():
        with torch.no_grad():
            m.forward_tail(x, idn)

    def plain():
        with torch.no_grad():
            torch.relu(x + idn)

    def fused_fb():
        xg.grad = ig.grad = None
        m.forward_tail(xg, ig).backward(g)

    def plain_fb():
        xg.grad = ig.grad = None
        torch.relu(xg + ig).backward(g)

    return {"fused": fused, "plain": plain, "fused_fb": fused_fb, "plain_fb": plain_fb}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--dtypes", default="float32,bfloat16,float16")
    a = ap.parse_args()
    bad = [d for d in a.dtypes.split(",") if d not in ("float32", "bfloat16", "float16")]
    if bad:
        ap.error(f"--dtypes takes float32, bfloat16 and float16, comma-separated; got {', '.join(bad)}")
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    print(f"{a.threads} threads, kernels: {cbam.ops.backend_name(torch.zeros(1, 1, 1, 1))}; medians of {a.reps} "
          f"interleaved rounds; ratio = fused tail / relu(x + identity)\n")
    print("| shape | layout | dtype | inference ms (fused / plain) | ratio | fwd+bwd ms (fused / plain) | ratio |")
    print("|---|---|---|---:|---:|---:|---:|")
    for shape in SHAPES:
        m = cbam.CBAM(shape[1])
        for lay, fmt in LAYOUTS.items():
            for name in a.dtypes.split(","):
                t = timed_rounds(_calls(m, shape, getattr(torch, name), fmt), a.reps, torch.device("cpu"))
                print(f"| {'x'.join(map(str, shape))} | {lay} | {name} | {1e3 * t['fused']:.2f} / "
                      f"{1e3 * t['plain']:.2f} | {t['fused'] / t['plain']:.2f}x | {1e3 * t['fused_fb']:.2f} / "
                      f"{1e3 * t['plain_fb']:.2f} | {t['fused_fb'] / t['plain_fb']:.2f}x |", flush=True)
    # a tiny input: what a call costs besides its data (Python, autograd, dispatch, thread wake-ups)
    t = timed_rounds(_calls(cbam.CBAM(16), (2, 16, 4, 4), torch.float32, torch.contiguous_format), 10 * a.reps,
                     torch.device("cpu"))
    print(f"\nper call, 2x16x4x4 float32 NCHW: inference {1e3 * t['fused']:.3f} / {1e3 * t['plain']:.3f} ms, "
          f"fwd+bwd {1e3 * t['fused_fb']:.3f} / {1e3 * t['plain_fb']:.3f} ms (fused / plain)")


if __name__ == "__main__":
    main()
