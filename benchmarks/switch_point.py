"""Benchmark command: where the per-sample CPU forward stops paying against the three batch-wide passes.

`python benchmarks/switch_point.py [--threads 2] [--batch 8] [--reps 7]` times the fused forward
(inference, NCHW, 256 channels) both ways for samples of 1 to 32 MiB and prints the ratio next to
the choice the heuristic (`cbam.ops._forward.per_sample`) makes on this machine.
"""
import argparse

import torch

import cbam
from cbam.bench import timed_rounds
from cbam.ops import _forward as FW


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--reps", type=int, default=7)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    choose = FW.per_sample
    for mib in (1, 2, 4, 8, 16, 32):
        c = 256
        side = int((mib * (1 << 20) / 4 / c) ** 0.5)
        x = torch.randn(a.batch, c, side, side)
        m = cbam.CBAM(c).eval()

        def run(forced: bool):
            def f():
                FW.per_sample = lambda K, t: forced
                try:
                    with torch.no_grad():
                        m(x)
                finally:
                    FW.per_sample = choose
            return f
        t = timed_rounds({"per_sample": run(True), "passes": run(False)}, a.reps, torch.device("cpu"))
        picked = "per-sample" if choose(FW.kernels_for(x), x) else "three passes"
        print(f"sample {x[0].numel() * 4 / 2 ** 20:5.1f} MiB: per-sample {1e3 * t['per_sample']:7.2f} ms, "
              f"three passes {1e3 * t['passes']:7.2f} ms, ratio {t['per_sample'] / t['passes']:.2f}; "
              f"the heuristic picks {picked}", flush=True)


if __name__ == "__main__":
    main()
