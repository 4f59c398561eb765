"""The ablation machinery (not the science): grid, shards, resume-by-skipping, merged summary, verdicts."""
import json
import os

import pytest

from cbam.cli import main
from cbam.train.ablate import CLAIMS, PAPER_SUITE, SUITES, build_recipe, grid, parse_shard, shard_entries

# tiny and deterministic: 8x8 digits, 2 steps of 1 epoch, one thread, the reference kernels (nothing to compile)
TINY = ["--data", "digits", "--train-subset", "128", "--test-subset", "64", "--batch-size", "32",
        "--max-steps-per-epoch", "2", "--impl", "reference", "--no-tensorboard", "--threads", "1"]


def test_paper_grid_covers_every_claim():
    names = {v.name for v in PAPER_SUITE}
    assert len(PAPER_SUITE) == 10
    for _, better, worse, _ in CLAIMS:
        assert better in names and worse in names
    assert [v.name for v in SUITES["cluttered"].variants] == ["baseline", "ch_avgmax", "cbam"]
    assert SUITES["converged"].recipe["train_subset"] is None and SUITES["cluttered"].recipe["data"].startswith(
        "cluttered-fashion-mnist")


@pytest.mark.parametrize("n", [1, 2, 3, 7, 40])
def test_shards_partition_the_grid(n):
    entries = [(v.name, s) for v, s in grid(PAPER_SUITE, 3)]
    parts = [shard_entries(entries, k, n) for k in range(n)]
    assert sorted(e for p in parts for e in p) == sorted(entries)  # every run once, in exactly one shard
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_parse_shard(monkeypatch):
    assert parse_shard(None) == (0, 1) and parse_shard("2/3") == (2, 3)
    for bad in ("3/3", "1", "a/b", "-1/2"):
        with pytest.raises(ValueError, match="shard"):
            parse_shard(bad)
    for var in ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN", "RANK", "WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert parse_shard("auto") == (1, 4) and os.environ["WORLD_SIZE"] == "1"  # ranks train alone, no DDP
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "1")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "3")
    assert parse_shard("auto") == (2, 3)  # --array=1-3: the third task is shard 2


def test_recipe_layers_suite_then_file_keys_then_flags(tmp_path):
    f = tmp_path / "r.json"
    f.write_text(json.dumps({"lr": 0.05}))
    cfg = build_recipe("converged", str(f), {"epochs": 2, "seed": None})
    assert (cfg.lr, cfg.epochs, cfg.weight_decay, cfg.train_subset, cfg.seed) == (0.05, 2, 5e-4, None, 0)
    with pytest.raises(ValueError, match="unknown suite"):
        build_recipe("nope")


def _summary(out):
    with open(os.path.join(out, "summary.json")) as f:
        s = json.load(f)
    s.pop("timing")
    return s


def _read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def _result(run):
    with open(os.path.join(run, "result.json")) as f:
        r = json.load(f)
    return {k: v for k, v in r.items() if k not in ("images_per_s", "train_s", "finished")}


def test_one_and_three_shards_give_the_same_summary(tmp_path, capsys):
    one, three = str(tmp_path / "one"), str(tmp_path / "three")
    assert main(["ablate", "--smoke", "--seeds", "2", "--out", one, *TINY]) == 0
    assert main(["ablate", "--smoke", "--seeds", "2", "--out", three, "--shard", "0/3", *TINY]) == 0
    partial = _read(os.path.join(three, "summary.md"))
    assert "**Incomplete: 2 run(s) not finished** (baseline seed 1, cbam seed 0)" in partial
    assert "CBAM beats the baseline" not in partial  # no seed has both variants yet: nothing to pair
    for k in (1, 2):
        assert main(["ablate", "--smoke", "--seeds", "2", "--out", three, "--shard", f"{k}/3", *TINY]) == 0
    assert main(["ablate", "--out", three, "--summary-only"]) == 0
    a, b = _summary(one), _summary(three)
    assert a == b and not a["missing"] and [v["variant"] for v in a["variants"]] == ["baseline", "cbam"]
    assert a["claims"][0]["claim"] == "CBAM beats the baseline" and a["claims"][0]["n"] == 2
    for v in ("baseline", "cbam"):  # the very same training, whichever shard ran it
        for s in (0, 1):
            ra, rb = (_result(os.path.join(d, v, f"seed{s}")) for d in (one, three))
            assert ra == rb and ra["test_loss"] > 0
    # shard 0/3 of 4 runs took entries 0 and 3: baseline seed 0 and cbam seed 1
    out = capsys.readouterr().out
    assert "[shard 0/3: 2/2] cbam seed 1: training" in out


def test_resume_skips_finished_runs_and_refuses_another_recipe(tmp_path, capsys):
    out = str(tmp_path / "ab")
    args = ["ablate", "--smoke", "--seeds", "2", "--out", out, *TINY]
    assert main(args) == 0
    res = os.path.join(out, "cbam", "seed1", "result.json")
    mtime = os.path.getmtime(res)
    md = _read(os.path.join(out, "summary.md"))
    assert "| baseline |" in md and "| cbam |" in md and "CBAM beats SE" not in md  # SE not in the smoke grid
    assert "MDE" in md
    capsys.readouterr()
    assert main(args) == 0  # everything finished: nothing retrained
    assert capsys.readouterr().out.count("finished, skipped") == 4
    assert os.path.getmtime(res) == mtime
    rows = _read(os.path.join(out, "summary.csv")).splitlines()
    assert rows[0].startswith("variant,description,seeds,top1_mean,top1_std,per_seed") and len(rows) == 3
    assert main(["ablate", "--smoke", "--seeds", "2", "--out", out, *TINY, "--lr", "0.01"]) == 2  # another recipe
    assert "differs in: lr" in capsys.readouterr().err


def test_a_shard_with_no_runs_ends_cleanly(tmp_path, capsys):
    """More shards than runs (JOBS=P on one machine): the extra shards train nothing and succeed."""
    out = str(tmp_path / "g")
    assert main(["ablate", "--smoke", "--seeds", "1", "--out", out, "--shard", "3/4", *TINY]) == 0
    assert "[shard 3/4] no runs: the grid has 2" in capsys.readouterr().out
    assert not os.path.exists(os.path.join(out, "baseline")) and not os.path.exists(os.path.join(out, "cbam"))
