"""`cbam bench --smoke`: the benchmark machinery end to end on tiny shapes (not a timing test)."""
import math
import re

import pytest
import torch

from cbam import bench, bench_matrix
from cbam.cli import main


def test_bench_smoke_writes_a_complete_report(tmp_path, capsys):
    out = tmp_path / "bench.md"
    assert main(["bench", "--smoke", "--out", str(out)]) == 0
    n_cfg = len(bench_matrix.default_configs("cpu").split(","))  # 2 on a CPU without bf16 arithmetic, else 4
    md = out.read_text()
    assert md.startswith("## CBAM benchmark: cpu") and md.strip() in capsys.readouterr().out
    stage = [ln for ln in md.splitlines() if re.match(r"\| 2x(32x8x8|64x4x4) \|", ln)]
    assert len(stage) == 2
    for ln in stage:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        nums = [float(c.rstrip("x")) for c in cells[2:12]]
        assert all(math.isfinite(v) and v > 0 for v in nums), ln
        eager_saved, fused_saved = (float(v) for v in cells[12].split("/"))
        assert fused_saved < eager_saved  # the fused op keeps less for backward, even here
    assert "allocator: " in md.splitlines()[0]
    from cbam.ops import _cpu
    if _cpu.load() is not None:  # the header names the kernels' build: another family may be measured
        assert f"kernels: -march={_cpu.target_march()} ({_cpu.load().vector_isa()})" in md.splitlines()[0]
    # the network matrix: per (network, mode) a table with a column per configuration
    for title in ("resnet50, 2 @ 64, inference", "resnet50, 2 @ 64, training step", "resnet20, 4 @ 16, inference",
                  "resnet20, 4 @ 16, training step", "resnet20, 1 @ 16, inference", "resnet20, 1 @ 16, training step"):
        assert f"**{title}**" in md, title
    tables = md.split("### Networks")[1]
    cbam_rows = [ln for ln in tables.splitlines() if ln.startswith("| CBAM fused |")]
    assert len(cbam_rows) == 6 and all(len(ln.split("|")) == n_cfg + 3 for ln in cbam_rows)  # a cell per config
    met = [ln for ln in tables.splitlines() if ln.startswith("| met |")]
    assert all(set(c.strip() for c in ln.strip("|").split("|")[1:]) <= {"yes", "no", "yes (noisy)", "no (noisy)"}
               for ln in met)


def test_matrix_target_and_verdict_follow_the_numbers():
    """The target is max(5 %, 1.5 x bound), tighter for ResNet-50 fp32 NCHW and at most SE's for ResNet-20
    training; the 'met' row is computed from the cell, not written."""
    from cbam import bench_matrix as BM
    row = {"net": "resnet50, 8 @ 224", "mode": "inference", "config": "bf16 channels_last", "plain_ms": 10.0,
           "bound_pct": 6.0, "SE": 2.0, "CBAM reference": 30.0, "CBAM fused": 8.9}
    assert BM.target_pct(row) == 9.0
    assert BM.target_pct({**row, "bound_pct": 1.0}) == 5.0
    assert BM.target_pct({**row, "config": "fp32 NCHW"}) == 3.0
    assert BM.target_pct({**row, "config": "fp32 NCHW", "mode": "training step"}) == 5.0
    r20 = {**row, "net": "resnet20, 128 @ 28", "mode": "training step", "bound_pct": 1.0, "SE": 4.0}
    assert BM.target_pct(r20) == 4.0
    md = BM.matrix_markdown([row, {**row, "config": "fp32 NCHW"}], ["fp32 NCHW", "bf16 channels_last"])
    assert "| met | no | yes |" in md
    # the middle half of the rounds straddling the target marks the verdict as noisy, not the verdict itself
    assert BM.verdict({**row, "fused_spread": (8.0, 9.5)}) == "yes (noisy)"
    assert BM.verdict({**row, "CBAM fused": 9.2, "fused_spread": (8.0, 9.5)}) == "no (noisy)"
    assert BM.verdict({**row, "fused_spread": (7.0, 8.95)}) == "yes"
    assert BM.verdict({**row, "CBAM fused": 9.2, "fused_spread": (9.1, 12.0)}) == "no"


def test_spread_is_the_quartiles_of_per_round_overheads():
    from cbam import bench_matrix as BM
    plain = [10.0] * 9
    fused = [10.0 * (1 + p / 100) for p in (9, 1, 8, 2, 7, 3, 6, 4, 5)]  # overheads 1..9 % in scrambled rounds
    lo, hi = BM.spread(fused, plain)
    assert (round(lo, 6), round(hi, 6)) == (3.0, 7.0)
    assert BM.spread([11.0], [10.0]) == pytest.approx((10.0, 10.0))


def test_bench_rejects_unknown_matrix_names(capsys):
    assert main(["bench", "--smoke", "--nets", "resnet9"]) == 2
    assert "--nets" in capsys.readouterr().err


def test_timed_rounds_rotates_and_takes_medians(monkeypatch):
    """A fake clock that each function advances by its own scripted durations: the medians, the
    rotation of the order per round and the untimed warm calls are all knowable."""
    clock, calls = [0.0], []
    durations = {"a": iter([9, 1, 2, 3, 100, 100]), "b": iter([9, 5, 7, 6, 100, 100])}

    def make(k):
        def fn():
            calls.append(k)
            clock[0] += next(durations[k])
        return fn
    monkeypatch.setattr(bench.time, "perf_counter", lambda: clock[0])
    out = bench.timed_rounds({"a": make("a"), "b": make("b")}, 3, torch.device("cpu"), warm_each=False)
    assert out == {"a": 2, "b": 6}  # warm-up 9 dropped; medians of (1, 2, 3) and (5, 7, 6)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]  # warm-ups, then rounds in rotated order
    calls.clear()
    durations = {"a": iter([0, 0, 4, 0, 8]), "b": iter([0, 0, 5, 0, 1])}
    out = bench.timed_rounds({"a": make("a"), "b": make("b")}, 2, torch.device("cpu"), warm_each=True)
    assert calls == ["a", "b", "a", "a", "b", "b", "b", "b", "a", "a"]
    assert out == {"a": 8, "b": 5}  # timed calls only (a: 4, 8 -> upper median 8; b: 5, 1 -> 5)


def test_bench_smoke_times_bf16_cells_when_named(tmp_path):
    """The bf16 autocast columns, which the default leaves out on CPUs without bf16 arithmetic."""
    out = tmp_path / "bench.md"
    assert main(["bench", "--smoke", "--no-stages", "--nets", "resnet20", "--configs", "bf16 NCHW,bf16 channels_last",
                 "--out", str(out)]) == 0
    md = out.read_text()
    assert "| | bf16 NCHW | bf16 channels_last |" in md
    for ln in md.splitlines():
        if ln.startswith(("| plain (ms) |", "| CBAM fused |")):
            vals = [float(c.split()[0]) for c in ln.strip("|").split("|")[1:]]
            assert len(vals) == 2 and all(math.isfinite(v) for v in vals), ln


def test_default_configs_drop_bf16_only_on_a_cpu_without_it():
    from cbam import bench_matrix as BM
    every = ",".join(BM.CONFIGS)
    assert BM.default_configs("cpu", "avx2 avx512f avx512_bf16") == every
    assert BM.default_configs("cpu", "avx2 fma") == "fp32 NCHW,fp32 channels_last"
    assert BM.default_configs("cuda", "avx2 fma") == every  # the GPU does bf16 whatever the host CPU
