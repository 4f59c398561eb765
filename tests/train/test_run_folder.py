"""Run folders: another run is never overwritten or mixed in, pruning keeps what last.json names,
and a killed run's leftovers are removed."""
import json
import os

import pytest
from safetensors.torch import save_file

from cbam.cli import main
from cbam.train import TrainConfig, train
from cbam.train.checkpoint import latest_checkpoint, prune_checkpoints

FAST = ["--data", "digits", "--model", "resnet20", "--batch-size", "32", "--train-subset", "96", "--test-subset",
        "32", "--no-progress", "--no-tensorboard", "--threads", "1", "--warmup-epochs", "0"]


def _ckpt_files(out):
    return sorted(os.listdir(os.path.join(out, "checkpoints")))


def test_second_run_into_a_folder_is_refused_without_resume_or_overwrite(tmp_path, capsys):
    out = str(tmp_path / "x")
    assert main(["train", *FAST, "--epochs", "3", "--out", out]) == 0
    before = {f: os.path.getmtime(os.path.join(out, "checkpoints", f)) for f in _ckpt_files(out)}
    capsys.readouterr()
    assert main(["train", *FAST, "--epochs", "1", "--out", out]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already holds a run with 3 finished epoch(s); pass --resume" in err
    assert {f: os.path.getmtime(os.path.join(out, "checkpoints", f)) for f in _ckpt_files(out)} == before
    # --overwrite replaces the old run as a whole: the manifest, checkpoints and metrics all belong to the new one
    assert main(["train", *FAST, "--epochs", "1", "--out", out, "--overwrite"]) == 0
    assert latest_checkpoint(out)[0] == 1 and _ckpt_files(out) == ["epoch_0001.safetensors", "epoch_0001.state.pt"]
    assert len(open(os.path.join(out, "metrics.csv")).read().splitlines()) == 2
    assert main(["eval", out]) == 0


def test_prune_keeps_the_manifest_epoch_and_removes_unlisted_later_ones(tmp_path):
    out = str(tmp_path)
    ck = tmp_path / "checkpoints"
    ck.mkdir()
    for e in range(1, 6):
        for ext in ("safetensors", "state.pt"):
            (ck / f"epoch_{e:04d}.{ext}").write_bytes(b"x")
    (tmp_path / "last.json").write_text(json.dumps({"epoch": 3, "weights": "epoch_0003.safetensors",
                                                    "state": "epoch_0003.state.pt"}))
    prune_checkpoints(out, keep=2)
    assert _ckpt_files(out) == ["epoch_0002.safetensors", "epoch_0002.state.pt", "epoch_0003.safetensors",
                                "epoch_0003.state.pt"]
    prune_checkpoints(out, keep=1)
    assert _ckpt_files(out) == ["epoch_0003.safetensors", "epoch_0003.state.pt"]
    with pytest.raises(ValueError, match="keep_checkpoints must be >= 1"):
        prune_checkpoints(out, keep=0)


@pytest.mark.parametrize("keep", ["0", "-1"])
def test_keep_checkpoints_below_one_is_refused_before_anything_is_deleted(tmp_path, capsys, keep):
    out = str(tmp_path / "k")
    assert main(["train", *FAST, "--epochs", "1", "--out", out]) == 0
    capsys.readouterr()
    assert main(["train", *FAST, "--epochs", "2", "--out", out, "--resume", "--keep-checkpoints", keep]) == 2
    assert "keep_checkpoints (--keep-checkpoints) must be >= 1" in capsys.readouterr().err
    assert os.path.exists(latest_checkpoint(out)[1])
    assert main(["train", *FAST, "--epochs", "2", "--out", out, "--resume", "--keep-checkpoints", "1"]) == 0
    assert _ckpt_files(out) == ["epoch_0002.safetensors", "epoch_0002.state.pt"]


def test_leftovers_of_a_killed_run_are_removed_on_resume(tmp_path):
    out = str(tmp_path / "r")
    cfg = dict(data="digits", model="resnet20", batch_size=32, train_subset=96, test_subset=32, progress=False,
               tensorboard=False, threads=1, out=out)
    train(TrainConfig(epochs=1, **cfg))
    ck = os.path.join(out, "checkpoints")
    # what kill -9 leaves: atomic_write temporaries, and a weights file of an epoch never put in last.json
    junk = [os.path.join(ck, ".epoch_0002.safetensors.a1b2c3d4.tmp"), os.path.join(out, ".metrics.csv.zz_9YY00.tmp")]
    for p in junk:
        open(p, "wb").write(b"half")
    save_file({}, os.path.join(ck, "epoch_0007.safetensors"))
    other = os.path.join(out, "notes.tmp")  # not a name atomic_write makes: the user's, left alone
    open(other, "w").write("mine")
    train(TrainConfig(epochs=2, resume=True, **cfg))
    assert not any(os.path.exists(p) for p in junk)
    assert _ckpt_files(out) == ["epoch_0001.safetensors", "epoch_0001.state.pt", "epoch_0002.safetensors",
                                "epoch_0002.state.pt"]
    assert open(other).read() == "mine"


def test_out_that_is_a_file_or_cannot_be_written(tmp_path, capsys, monkeypatch):
    f = tmp_path / "occupied"
    f.write_text("x")
    assert main(["train", *FAST, "--epochs", "1", "--out", str(f)]) == 2
    assert f"--out {f} is a file, not a folder" in capsys.readouterr().err
    assert main(["train", *FAST, "--epochs", "1", "--out", str(f / "run")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err

    with monkeypatch.context() as m:  # what a read-only folder reports (root passes every permission check)
        m.setattr(os, "access", lambda path, mode: False)
        assert main(["train", *FAST, "--epochs", "1", "--out", str(tmp_path / "ro" / "run")]) == 2
    assert f"--out {tmp_path / 'ro' / 'run'}: no permission to write in {tmp_path}" in capsys.readouterr().err

    def full(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr("cbam.train.loop.write_json", full)
    assert main(["train", *FAST, "--epochs", "1", "--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert err == "cbam train: error: [Errno 28] No space left on device\n"
