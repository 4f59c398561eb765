"""A checkpoint is written only of finite weights, and the divergence message names one that is."""
import os

import pytest
import torch
from safetensors.torch import load_file

from cbam.models import create_model
from cbam.train import TrainConfig, TrainingDiverged, train
from cbam.train.checkpoint import latest_checkpoint, save_checkpoint

CFG = dict(data="digits", model="resnet20", batch_size=32, train_subset=128, test_subset=32, progress=False,
           tensorboard=False, threads=1, warmup_epochs=0)


def test_a_step_that_breaks_the_weights_is_not_saved(tmp_path):
    # lr 1e6: the loss before each of the 3 steps is finite, but the BN running variances overflow
    out = str(tmp_path / "d")
    with pytest.raises(TrainingDiverged, match=r"weights became non-finite in epoch 1 \(\d+ tensors, first "
                                               r".*\); not saved\. Last good checkpoint: none yet"):
        train(TrainConfig(lr=1e6, max_steps_per_epoch=3, epochs=1, out=out, **CFG))
    assert latest_checkpoint(out) is None
    assert os.listdir(os.path.join(out, "checkpoints")) == []


def test_divergence_message_names_a_finite_checkpoint(tmp_path):
    out = str(tmp_path / "d")
    train(TrainConfig(lr=0.05, epochs=1, out=out, **CFG))
    good = latest_checkpoint(out)[1]
    with pytest.raises(TrainingDiverged, match="epoch 2.*Last good checkpoint: " + good.replace("\\", "\\\\")):
        train(TrainConfig(lr=1e6, max_steps_per_epoch=3, epochs=2, resume=True, out=out, **CFG))
    assert latest_checkpoint(out)[1] == good
    w = load_file(good)
    assert all(bool(torch.isfinite(t).all()) for t in w.values() if t.is_floating_point())


def test_save_checkpoint_refuses_non_finite_buffers(tmp_path):
    m = create_model("resnet20", in_chans=1)
    m.layer1[0].bn1.running_var[3] = float("inf")
    with pytest.raises(TrainingDiverged, match=r"not saving epoch 1: 1 tensors are not finite \(first: "
                                               r"layer1\.0\.bn1\.running_var\)"):
        save_checkpoint(str(tmp_path), 1, m, {"optimizer": {}, "history": []})
    assert latest_checkpoint(str(tmp_path)) is None
