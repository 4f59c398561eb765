"""The demo's time budget: the subset arithmetic worked by hand, the measurement leaving the runs
unchanged, and the demo sizing (and on resume keeping) its training set from injected rates."""
import json

import pytest
import torch

from cbam.train import demo as D
from cbam.train.budget import Rates, fit_train_subset, measure_rates, predicted_seconds

SLOW = [Rates(train=200.0, eval=1000.0), Rates(train=100.0, eval=500.0)]


def test_predicted_seconds_by_hand():
    # epoch: 1000/200 + 500/1000 + 1000/100 + 500/500 = 5 + 0.5 + 10 + 1 = 16.5 s; 3 epochs: 49.5 s
    assert predicted_seconds(SLOW, 1000, 500, 3) == pytest.approx(49.5)


def test_fit_train_subset_by_hand():
    # evaluation: 3 * (500/1000 + 500/500) = 4.5 s; each training image 3 * (1/200 + 1/100) = 0.045 s.
    # 100 s: (100 - 4.5) / 0.045 = 2122.2 images -> 2000 at a step of 500; 1000 images at a step of 1 -> 2122
    assert fit_train_subset(SLOW, 100.0, 500, 3, full=12_000, step=500, minimum=500) == 2000
    assert fit_train_subset(SLOW, 100.0, 500, 3, full=12_000, step=1, minimum=500) == 2122
    assert fit_train_subset(SLOW, 1e6, 500, 3, full=12_000) == 12_000            # all fits: the recipe
    assert fit_train_subset(SLOW, 1e6, 500, 3, full=1_234) == 1_234               # ... even off the step
    assert fit_train_subset(SLOW, 10.0, 500, 3, full=12_000, minimum=2000) == 2000  # nothing fits: the floor
    assert fit_train_subset(SLOW, 10.0, 500, 3, full=300, minimum=2000) == 300      # a floor above the data


def test_measure_rates_leaves_the_random_state_alone():
    cfg = D.demo_config("unused", quick=True, data="digits", impl="reference", threads=1)
    data = D.load_data(cfg)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    r = measure_rates(cfg, data, steps=2, eval_images=64)
    assert torch.equal(torch.get_rng_state(), before)
    assert 0 < r.train < float("inf") and 0 < r.eval < float("inf")


def test_demo_picks_the_faster_layout_sizes_its_training_set_and_keeps_both_on_resume(tmp_path, monkeypatch):
    # injected rates: NCHW trains at 150 images/s per variant, channels_last at 100, so NCHW wins and
    # each training image costs 3 / 150 = 0.02 s per epoch over the 3 variants
    monkeypatch.setattr(D, "measure_rates", lambda cfg, data: Rates(100.0 if cfg.channels_last else 150.0, 1000.0))
    kw = dict(data="digits", impl="reference", threads=1, tensorboard=False)
    out = str(tmp_path / "demo")
    budget = D.REPORT_RESERVE_S + 10.0 / D.SAFETY  # about 10 s left for training: ~460 of the quick recipe's 512
    report = D.run_demo(out, quick=True, progress=False, resume=True, log=lambda s: None, budget_s=budget, **kw)
    configs = [json.load(open(f"{out}/{v}/config.json")) for v, _ in D.VARIANTS]
    assert {c["channels_last"] for c in configs} == {False}
    assert len({c["train_subset"] for c in configs}) == 1
    n = configs[0]["train_subset"]
    # predicted: 3 evaluations of the quick recipe's 256 test images (0.768 s) + 0.02 s per training image
    assert 128 <= n < 512 and 0.768 + n * 0.02 <= 10.0
    text = open(report).read()
    assert f"NCHW memory format, the faster here, and {n:,} of the recipe's 512 training images" in text
    assert "channels_last: baseline 100 / 1000" in text and "NCHW: baseline 150 / 1000" in text
    assert "NCHW memory format" in text.split("Configuration:")[1].splitlines()[0]

    def must_not_measure(cfg, data):
        raise AssertionError("a resumed demo keeps its choices without measuring")
    monkeypatch.setattr(D, "measure_rates", must_not_measure)
    D.run_demo(out, quick=True, progress=False, resume=True, log=lambda s: None, budget_s=1.0, **kw)
    c = json.load(open(f"{out}/cbam/config.json"))
    assert c["train_subset"] == n and c["channels_last"] is False
    assert f"kept from the runs already in {out}" in open(report).read()
    with pytest.raises(ValueError, match=f"holds demo runs made with train_subset={n}; rerun with --fresh"):
        D.run_demo(out, quick=True, progress=False, resume=True, log=lambda s: None, train_subset=n + 1, **kw)
    c["channels_last"] = True  # as an interrupted --fresh demo leaves its folder: runs of two recipes
    with open(f"{out}/cbam/config.json", "w") as f:
        json.dump(c, f)
    with pytest.raises(ValueError, match="were made with different settings"):
        D.run_demo(out, quick=True, progress=False, resume=True, log=lambda s: None, **kw)
