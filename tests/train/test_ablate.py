"""The ablation machinery (not the science): grid, resume-by-skipping, summary, verdicts."""
import os

from cbam.cli import main
from cbam.train.ablate import CLAIMS, PAPER_SUITE, verdict


def test_verdicts():
    assert verdict([1.0, 1.2, 0.9]) == "confirmed"
    assert verdict([-1.0, -1.2, -0.9]) == "contradicted"
    assert verdict([1.0, -0.8, 0.3]) == "inconclusive given the spread"
    assert verdict([-0.2, 0.1, -0.3]) == "not confirmed at this scale"
    assert verdict([0.5]) == "inconclusive (one seed)"


def test_paper_grid_covers_every_claim():
    names = {v.name for v in PAPER_SUITE}
    assert len(PAPER_SUITE) == 10
    for _, better, worse, _ in CLAIMS:
        assert better in names and worse in names


def test_smoke_suite_runs_resumes_and_summarises(tmp_path, capsys):
    out = str(tmp_path / "ab")
    args = ["ablate", "--smoke", "--seeds", "2", "--data", "digits", "--out", out, "--no-tensorboard",
            "--threads", "1"]
    assert main(args) == 0
    ck = os.path.join(out, "cbam", "seed1", "last.json")
    mtime = os.path.getmtime(ck)
    for f in ("summary.md", "summary.csv", "summary.png"):
        assert os.path.exists(os.path.join(out, f)), f
    md = open(os.path.join(out, "summary.md")).read()
    assert "| baseline |" in md and "| cbam |" in md and "CBAM beats SE" not in md  # SE not in the smoke grid
    capsys.readouterr()
    assert main(args) == 0  # second call: everything finished, nothing retrained
    assert "finished, skipped" in capsys.readouterr().out
    assert os.path.getmtime(ck) == mtime
    rows = open(os.path.join(out, "summary.csv")).read().splitlines()
    assert rows[0].startswith("variant,description,seeds,top1_mean") and len(rows) == 3
