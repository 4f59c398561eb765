"""`cbam bench --smoke`: the benchmark machinery end to end on tiny shapes (not a timing test)."""
import math
import re

import pytest
import torch

from cbam import bench
from cbam.cli import main


def test_bench_smoke_writes_a_complete_report(tmp_path, capsys):
    out = tmp_path / "bench.md"
    assert main(["bench", "--smoke", "--out", str(out)]) == 0
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
    nets = [ln for ln in md.splitlines() if ln.startswith("| resnet50")]
    assert [ln.split("|")[1].strip() for ln in nets] == ["resnet50", "resnet50 + CBAM (reference)",
                                                         "resnet50 + CBAM (fused)"]
    assert "+0.0 %" in nets[0]
    situ = [float(ln.split("|")[4].strip().rstrip(" %")) for ln in nets]  # time inside the CBAM calls
    assert situ[0] == 0.0 and situ[1] > 0 and situ[2] > 0
    assert all(int(ln.split("|")[5]) >= 0 for ln in nets)  # page faults per inference
    assert "allocator: " in md.splitlines()[0]


def test_page_fault_count_sees_fresh_memory():
    """Writing one byte per page of a fresh 64 MB anonymous mapping must register as at least one
    fault per 2 MiB (huge pages) -- and none when nothing new is touched."""
    pytest.importorskip("resource")
    import mmap

    import numpy as np
    size = 64 << 20

    def touch():
        m = mmap.mmap(-1, size)
        np.frombuffer(m, dtype=np.uint8)[::4096] = 1
        m.close()
    assert bench._in_situ(torch.nn.Identity(), touch, 3)[1] >= size // (2 << 20)
    assert bench._in_situ(torch.nn.Identity(), lambda: None, 3)[1] == 0


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
