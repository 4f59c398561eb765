"""`cbam bench --smoke`: the benchmark machinery end to end on tiny shapes (not a timing test)."""
import math
import re

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
        nums = [float(c.rstrip("x")) for c in cells[2:11]]
        assert all(math.isfinite(v) and v > 0 for v in nums), ln
        eager_saved, fused_saved = (float(v) for v in cells[11].split("/"))
        assert fused_saved < eager_saved  # the fused op keeps less for backward, even here
    nets = [ln for ln in md.splitlines() if ln.startswith("| resnet50")]
    assert [ln.split("|")[1].strip() for ln in nets] == ["resnet50", "resnet50 + CBAM (reference)",
                                                         "resnet50 + CBAM (fused)"]
    assert "+0.0 %" in nets[0]
