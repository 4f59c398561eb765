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
