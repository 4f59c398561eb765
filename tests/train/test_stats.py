"""Paired statistics: the t quantile without scipy, and the MDE / verdict on worked examples."""
import math

import pytest

from cbam.train import stats
from cbam.train.stats import Paired, compare, pair_by_seed, seeds_needed, t_cdf, t_quantile_bisect


@pytest.mark.parametrize("p,df,expected", [
    (0.975, 2, 4.303), (0.975, 4, 2.776), (0.8, 4, 0.941), (0.8, 2, 1.061), (0.975, 1, 12.706),
    (0.975, 30, 2.042), (0.995, 9, 3.250), (0.5, 3, 0.0), (0.025, 4, -2.776)])
def test_t_quantile_matches_tables(p, df, expected):
    assert t_quantile_bisect(p, df) == pytest.approx(expected, abs=6e-4)


def test_t_quantile_inverts_cdf_and_has_a_normal_limit():
    for df in (1, 2, 7, 50):
        assert t_cdf(t_quantile_bisect(0.9, df), df) == pytest.approx(0.9, abs=1e-10)
    assert t_quantile_bisect(0.975, 10_000) == pytest.approx(1.960, abs=1e-3)
    with pytest.raises(ValueError):
        t_quantile_bisect(1.0, 3)


def test_fallback_used_without_scipy(monkeypatch):
    import builtins
    real_import = builtins.__import__

    def no_scipy(name, *a, **k):
        if name.startswith("scipy"):
            raise ImportError(name)
        return real_import(name, *a, **k)
    monkeypatch.setattr(builtins, "__import__", no_scipy)
    assert stats.t_quantile(0.975, 4) == pytest.approx(2.776, abs=6e-4)


def test_worked_example_confirmed():
    # per-seed differences (better - worse, points), 5 seeds:
    #   mean = (0.5 + 0.9 + 0.1 + 0.7 + 0.3) / 5 = 2.5 / 5 = 0.5
    #   squared deviations: 0, 0.16, 0.16, 0.04, 0.04 -> sum 0.40; var = 0.40 / 4 = 0.1; sd = 0.3162
    #   se = sd / sqrt(5) = 0.3162 / 2.2361 = 0.14142
    #   CI = 0.5 +- t_{0.975,4} * se = 0.5 +- 2.776 * 0.14142 = 0.5 +- 0.3926 -> [0.107, 0.893]: excludes 0
    #   MDE = (t_{0.975,4} + t_{0.8,4}) * se = (2.776 + 0.941) * 0.14142 = 3.717 * 0.14142 = 0.5257
    p = Paired([0.5, 0.9, 0.1, 0.7, 0.3])
    assert p.mean == pytest.approx(0.5)
    assert p.sd == pytest.approx(math.sqrt(0.1))
    assert p.se == pytest.approx(0.14142, abs=1e-5)
    assert p.ci[0] == pytest.approx(0.107, abs=1e-3) and p.ci[1] == pytest.approx(0.893, abs=1e-3)
    assert p.mde == pytest.approx(0.5257, abs=5e-4)
    assert p.verdict == "confirmed"


def test_worked_example_below_detection_and_contradicted():
    # 3 seeds: d = 0.4, -0.2, 0.1 -> mean 0.1; deviations 0.3, -0.3, 0 -> sum of squares 0.18
    #   var = 0.18 / 2 = 0.09; sd = 0.3; se = 0.3 / sqrt(3) = 0.17321
    #   CI = 0.1 +- 4.303 * 0.17321 = 0.1 +- 0.7453 -> [-0.645, 0.845]: contains 0
    #   MDE = (4.303 + 1.061) * 0.17321 = 5.364 * 0.17321 = 0.929 -> "MDE 0.9 pt"
    p = Paired([0.4, -0.2, 0.1])
    assert p.se == pytest.approx(0.17321, abs=1e-5)
    assert p.ci[0] == pytest.approx(-0.645, abs=1e-3)
    assert p.mde == pytest.approx(0.929, abs=1e-3)
    assert p.verdict == "below what this run can detect (MDE 0.9 pt)"
    # the first example with its sign flipped: the CI excludes 0 on the wrong side
    assert Paired([-0.5, -0.9, -0.1, -0.7, -0.3]).verdict == "contradicted"
    assert Paired([0.5]).verdict.startswith("below what this run can detect (one seed")


def test_pairing_by_seed_drops_unpaired_seeds():
    seeds, diffs = pair_by_seed({0: 90.0, 1: 91.0, 2: 92.0}, {1: 90.5, 2: 91.0, 3: 80.0})
    assert seeds == [1, 2] and diffs == pytest.approx([0.5, 1.0])
    p = compare({0: 90.0, 1: 91.0, 2: 92.5}, {2: 92.0, 1: 90.5, 0: 89.0})
    assert p.seeds == [0, 1, 2] and p.diffs == pytest.approx([1.0, 0.5, 0.5])


def test_seeds_needed_reaches_the_target_mde():
    n = seeds_needed(sd_diff=0.3162, effect=0.5257)  # the first worked example: 5 seeds suffice, 4 do not
    assert n == 5


def test_seeds_needed_says_when_the_cap_is_not_enough():
    assert seeds_needed(sd_diff=1.0, effect=0.01, max_n=50) == 51  # not "50 would do"
