"""Pretrained weights: publish a finished run, load it offline by name, refuse a tampered file."""
import json
import os

import pytest
import torch

from cbam.data import load_dataset
from cbam.models import create_model, pretrained
from cbam.train import TrainConfig, evaluate, train
from cbam.train.publish import builtin_subset_top1, publish


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A CBAM ResNet-20 trained for a few steps on 8x8 digits (seconds, reference kernels)."""
    out = str(tmp_path_factory.mktemp("run") / "cbam")
    train(TrainConfig(model="resnet20", attention="cbam", impl="reference", data="digits", epochs=1, batch_size=32,
                      max_steps_per_epoch=3, out=out, tensorboard=False, progress=False, threads=1, seed=5))
    return out


@pytest.fixture
def shelf(tmp_path, monkeypatch):
    """An empty package-data folder in place of the shipped one."""
    d = tmp_path / "pretrained"
    d.mkdir()
    monkeypatch.setattr(pretrained, "SEARCH_PATH", [str(d)])
    return d


def test_publish_then_load_by_name_reproduces_the_cards_accuracy(run_dir, shelf):
    w, c = publish(run_dir, "digits-test", licence="CC0 (test data)")
    assert os.path.basename(w) == "resnet20_cbam-digits-test.safetensors" and os.path.dirname(c) == str(shelf)
    card = json.load(open(c))
    assert card["sha256"] == pretrained.sha256_of(w) and card["seed"] == 5 and card["licence"].startswith("CC0")
    assert card["eval"]["images"] == 360 and card["model_kwargs"]["in_chans"] == 1
    assert card["train_command"] == ("cbam train --attention cbam --impl reference --data digits --epochs 1 "
                                     "--batch-size 32 --seed 5 --max-steps-per-epoch 3")  # no run folder or threads
    assert pretrained.available() == [("resnet20_cbam", "digits-test")]
    # in_chans and num_classes come from the card; impl is a kernel choice passed on top of it
    model = create_model("ResNet20-CBAM", pretrained="digits-test", attention_kwargs={"impl": "reference"})
    data = load_dataset("digits", "test")
    assert model.pretrained_card["data"]["classes"] == data.classes
    acc = 100 * evaluate(model, data)["test_acc"]
    assert acc == pytest.approx(card["test_top1"], abs=0.006)  # the card's figure, on the same 360 images
    assert card["eval"]["command"] == "cbam eval resnet20_cbam --pretrained digits-test"
    trained = torch.load(os.path.join(run_dir, "checkpoints", "epoch_0001.state.pt"), weights_only=True)
    assert trained["history"][-1]["test_acc"] * 100 == pytest.approx(card["test_top1"], abs=0.006)


def test_tampered_weights_are_refused(run_dir, shelf):
    w, _ = publish(run_dir, "digits-test", licence="CC0")
    raw = bytearray(open(w, "rb").read())
    raw[-5] ^= 0x01  # one bit of one weight
    open(w, "wb").write(bytes(raw))
    with pytest.raises(ValueError, match="sha256 .* does not match its model card"):
        create_model("resnet20_cbam", pretrained="digits-test")


def test_missing_weights_name_what_is_available(run_dir, shelf):
    with pytest.raises(ValueError, match=r"^no pretrained weights 'fashion-mnist' for resnet20_se; available: "
                                         r"none in this version$"):
        create_model("resnet20_se", pretrained="fashion-mnist")
    publish(run_dir, "digits-test", licence="CC0")
    with pytest.raises(ValueError, match=r"available: resnet20_cbam \(pretrained='digits-test'\)$"):
        create_model("resnet20_cbam", pretrained="fashion-mnist")


def test_publish_refuses_below_min_acc_and_unstated_licence(run_dir, shelf):
    with pytest.raises(ValueError, match="below --min-acc 99.9"):
        publish(run_dir, "x", licence="CC0", min_acc=99.9)
    with pytest.raises(ValueError, match="state the licence"):
        publish(run_dir, "x")
    from cbam.cli import main
    assert main(["publish", run_dir, "--tag", "cli", "--licence", "CC0", "--dest", str(shelf)]) == 0
    assert os.path.exists(shelf / "resnet20_cbam-cli.json")


def test_fashion_card_records_the_builtin_subset_figure(tmp_path, shelf):
    import numpy as np
    from cbam.data import write_idx
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 64), ("t10k", 32)):  # a tiny IDX stand-in for the full data
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, n))
    out = str(tmp_path / "run")
    train(TrainConfig(model="resnet20", data="fashion-mnist", data_root=str(tmp_path), epochs=1, batch_size=32,
                      max_steps_per_epoch=1, out=out, tensorboard=False, progress=False, threads=1))
    _, c = publish(out, "fm-test")
    card = json.load(open(c))
    assert card["model"] == "resnet20" and card["licence"].startswith("weights: MIT") and card["eval"]["images"] == 32
    model = create_model("resnet20", pretrained="fm-test")
    assert builtin_subset_top1(model) == pytest.approx(card["builtin_subset_top1"], abs=0.006)


@pytest.mark.parametrize("name,tag", pretrained.available() or [pytest.param("-", "-", marks=pytest.mark.skip(
    reason="no pretrained weights shipped in this version"))])
def test_shipped_weights_match_their_cards(name, tag):
    model = create_model(name, pretrained=tag)  # also verifies the sha256
    card = model.pretrained_card
    assert card["test_top1"] >= 92.0
    assert builtin_subset_top1(model, card["data"]["image_size"]) == pytest.approx(
        card["builtin_subset_top1"], abs=0.006)


def test_cbam_eval_on_shipped_weights_prints_the_cards_figure(run_dir, shelf, tmp_path, capsys):
    """The card's eval command, run as written, measures the card's top-1."""
    from cbam.cli import main
    _, c = publish(run_dir, "digits-test", licence="CC0")
    card = json.load(open(c))
    argv = card["eval"]["command"].split()[1:] + ["--out", str(tmp_path / "ev")]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert f"top-1 {card['test_top1']:.2f} %" in printed and "(360 test images" in printed
    assert (tmp_path / "ev" / "confusion.png").exists()
