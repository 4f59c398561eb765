"""Every `cbam` subcommand: expected errors are one line on stderr with exit code 2, tracebacks only
with --debug or CBAM_DEBUG=1; no flag abbreviations; a Ctrl-C hint that fits the command."""
import os
import pickle
import shutil

import pytest
import torch

import cbam.cli as cli
from cbam.cli import main
from cbam.train import TrainConfig, train
from cbam.train.checkpoint import latest_checkpoint


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("runs") / "tiny")
    train(TrainConfig(data="digits", model="resnet20", batch_size=32, train_subset=64, test_subset=32, epochs=1,
                      progress=False, tensorboard=False, threads=1, out=out))
    return out


@pytest.fixture
def run(tiny_run, tmp_path):
    dst = str(tmp_path / "run")
    shutil.copytree(tiny_run, dst)
    return dst


def _one_line(capsys, cmd: str) -> str:
    err = capsys.readouterr().err
    assert err.startswith(f"cbam {cmd}: error: ") and err.count("\n") == 1, err
    return err


def test_truncated_weights_inside_a_run_name_the_file(run, capsys):
    w = latest_checkpoint(run)[1]
    data = open(w, "rb").read()
    open(w, "wb").write(data[: len(data) // 2])
    for argv in (["eval", run], ["export", run, "--format", "script", "--out", os.path.join(run, "m.pt")],
                 ["train", "--data", "digits", "--model", "resnet20", "--out", run, "--resume", "--epochs", "2"]):
        assert main(argv) == 2
        err = _one_line(capsys, argv[0])
        assert f"{w}: cannot read the weights" in err and "truncated or corrupt" in err


def test_tampered_state_is_refused_without_suggesting_the_unsafe_fix(run, capsys, tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    s = latest_checkpoint(run)[2]
    with open(s, "wb") as f:
        pickle.dump({"optimizer": Evil(), "history": []}, f, protocol=2)
    for argv in (["eval", run], ["train", "--data", "digits", "--model", "resnet20", "--out", run, "--resume",
                                 "--epochs", "2"], ["compare", run]):
        assert main(argv) == 2
        err = _one_line(capsys, argv[0])
        assert f"{s}: refusing to load" in err and "pickled code is never executed" in err
        assert "weights_only" not in err
    assert not marker.exists()


@pytest.mark.parametrize("argv,message", [
    (["eval", "{tmp}/none"], "is not a run folder (no config.json)"),
    (["compare", "{tmp}/none"], "is not a run folder"),
    (["viz", "{tmp}/none", "--out", "{tmp}/v"], "is not a run folder"),
    (["export", "{tmp}/none", "--out", "{tmp}/m.onnx"], "is not a run folder"),
    (["train", "--data", "imagenet", "--out", "{tmp}/t"], "unknown dataset 'imagenet'"),
    (["train", "--data", "folder", "--data-root", "{tmp}/none", "--out", "{tmp}/t"], "image folder not found"),
    (["ablate", "--suite", "nope", "--out", "{tmp}/a", "--data", "digits"], "nope"),
    (["demo", "--out", "{tmp}/file", "--quick"], "is a file, not a folder"),
    (["eval", "{tmp}/file"], "not a run folder"),
    pytest.param(["bench", "--device", "cuda", "--smoke"], "--device cuda: no CUDA device here",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")),
])
def test_each_subcommand_reports_one_line(tmp_path, capsys, argv, message):
    (tmp_path / "file").write_text("x")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(argv) == 2
    assert message in _one_line(capsys, argv[0])


def test_debug_flag_and_environment_show_the_traceback(tmp_path, capsys, monkeypatch):
    argv = ["eval", str(tmp_path / "none")]
    with pytest.raises(FileNotFoundError, match="not a run folder"):
        main(["--debug", *argv])
    with pytest.raises(FileNotFoundError):
        main([*argv, "--debug"])
    monkeypatch.setenv("CBAM_DEBUG", "1")
    with pytest.raises(FileNotFoundError):
        main(argv)
    monkeypatch.setenv("CBAM_DEBUG", "0")
    assert main(argv) == 2


def test_abbreviated_flags_are_refused(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--epoch", "1"])  # argparse's default would run --epochs 1
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err == "cbam train: error: unrecognized arguments: --epoch 1 (see cbam train --help)\n"


@pytest.mark.parametrize("argv,hint", [
    (["train", "--out", "r"], "cbam train: interrupted; rerun the same command with --resume to continue"),
    (["train", "--out", "r", "--resume"], "cbam train: interrupted; rerun the same command to continue"),
    (["demo", "--fresh"], "cbam demo: interrupted; rerun `cbam demo` (without --fresh) to continue"),
    (["demo", "--out", "d"], "rerun `cbam demo --out d` (without --fresh)"),
    (["ablate"], "cbam ablate: interrupted; rerun the same command to continue: finished runs are skipped"),
    (["compare", "r"], "cbam compare: interrupted\n"),
])
def test_ctrl_c_hint_fits_the_command(monkeypatch, capsys, argv, hint):
    def interrupted(a):
        raise KeyboardInterrupt
    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    sub = next(a for a in parser._actions if a.dest == "cmd")
    sub.choices[argv[0]].set_defaults(fn=interrupted)
    assert main(argv) == 130
    assert hint in capsys.readouterr().err


@pytest.mark.parametrize("argv,message", [
    (["demo", "--budget", "-5"], "argument --budget: expected a number of seconds >= 0, got '-5'"),
    (["demo", "--budget", "nan"], "argument --budget: expected a number of seconds >= 0, got 'nan'"),
    (["demo", "--train-subset", "0"], "argument --train-subset: expected a whole number >= 1, got '0'"),
])
def test_demo_flags_are_range_checked(capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err
