"""The demo's verdict sentence is computed from the table: the difference in top-1 against the
test set's binomial sampling error, worked out by hand here."""
from cbam.train.report import demo_verdict


def _run(acc):
    return {"history": [{"test_acc": acc}], "config": {}}


def test_verdict_separates_only_beyond_the_sampling_error():
    # n = 5000, baseline 0.8442, cbam 0.8414: half-width = 196 * sqrt(.8414*.1586/5000 + .8442*.1558/5000)
    # = 196 * sqrt(2.6689e-5 + 2.6305e-5) = 196 * 7.2797e-3 = 1.4268 pt; the difference -0.28 pt is inside
    v = demo_verdict([_run(0.8442), _run(0.8414), _run(0.8650)], ["baseline", "cbam", "se"], 5000)
    assert "cbam -0.28 pt vs baseline: within what 5,000 test images can resolve (+-1.43 pt at 95 %)" in v
    # se: +2.08 pt; half-width 196 * sqrt(.865*.135/5000 + .8442*.1558/5000) = 196 * sqrt(2.3355e-5 + 2.6305e-5)
    # = 196 * 7.0470e-3 = 1.3812 pt -> beyond it
    assert "se +2.08 pt vs baseline: beyond the test set's sampling error (+-1.38 pt at 95 %), but from one seed" in v
    assert v.startswith("Verdict (computed from the table)")


def test_no_verdict_without_results():
    assert demo_verdict([{"history": []}, _run(0.5)], ["a", "b"], 100) == ""
    assert demo_verdict([_run(0.5), _run(0.6)], ["a", "b"], 0) == ""


def test_shipped_comparison_puts_each_variant_beside_its_card(tmp_path, monkeypatch):
    """The demo's live top-1 beside the shipped converged network of the same model, read from the
    model card; variants without shipped weights are left out, and none at all gives no section."""
    import json
    from cbam.models import pretrained
    from cbam.train.report import shipped_comparison
    monkeypatch.setattr(pretrained, "SEARCH_PATH", [str(tmp_path)])
    runs = [{"history": [{"test_acc": 0.8442}], "config": {"model": "resnet20", "attention": None}},
            {"history": [{"test_acc": 0.8414}], "config": {"model": "resnet20", "attention": "cbam"}}]
    assert shipped_comparison(runs, ["baseline", "cbam"]) == ""
    card = {"model": "resnet20_cbam", "tag": "fashion-mnist", "test_top1": 93.27, "epochs": 15,
            "eval": {"images": 10000}, "train_command": "cbam train --epochs 15"}
    (tmp_path / "resnet20_cbam-fashion-mnist.json").write_text(json.dumps(card))
    (tmp_path / "resnet20_cbam-fashion-mnist.safetensors").write_bytes(b"")
    table = shipped_comparison(runs, ["baseline", "cbam"])
    rows = [r for r in table.splitlines() if r.startswith("| cbam")]
    assert rows == ["| cbam | 84.14 % | 93.27 % | 15 | 10,000 | `cbam train --epochs 15` |"]
    assert "| baseline" not in table
