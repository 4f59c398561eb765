"""bf16 autocast on a CPU without bfloat16 arithmetic runs several times slower than fp32: training
says so instead of silently taking the slow path."""
import warnings

import pytest
import torch

from cbam.train import loop
from cbam.train.config import TrainConfig


def test_bf16_on_a_cpu_without_bf16_warns(monkeypatch):
    monkeypatch.setattr(loop, "native_bf16", lambda flags=None: False)
    with pytest.warns(RuntimeWarning, match="amp=none"):
        ctx = loop._autocast(TrainConfig(amp="bf16"), torch.device("cpu"))
    with ctx:
        assert torch.is_autocast_enabled("cpu")


def test_bf16_on_a_cpu_with_bf16_and_fp32_stay_quiet(monkeypatch):
    monkeypatch.setattr(loop, "native_bf16", lambda flags=None: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loop._autocast(TrainConfig(amp="bf16"), torch.device("cpu"))
    monkeypatch.setattr(loop, "native_bf16", lambda flags=None: False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loop._autocast(TrainConfig(amp="none"), torch.device("cpu"))
