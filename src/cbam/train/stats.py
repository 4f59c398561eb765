"""Paired comparisons of runs across seeds: mean difference, standard error, confidence
interval, minimal detectable effect and a verdict that says what a grid can and cannot show.

Two variants trained with the same seed share the initialisation and the data order, so
their difference per seed removes most of the seed-to-seed noise. For ``n`` seeds with
per-seed differences ``d`` (claimed-better minus claimed-worse, in points)::

    mean = sum(d) / n
    sd   = sqrt(sum((d - mean)^2) / (n - 1))
    se   = sd / sqrt(n)
    CI   = mean +- t_{1-alpha/2, n-1} * se                       (paired t-test, two-sided)
    MDE  = (t_{1-alpha/2, n-1} + t_{power, n-1}) * sd / sqrt(n)   (alpha 0.05, power 0.8)

The MDE is the smallest true difference that this many seeds, with this spread, would
detect 80 % of the time; an effect below it is not evidence of no effect.
"""
import math
from dataclasses import dataclass, field
from typing import List, Mapping, Tuple

ALPHA = 0.05
POWER = 0.8


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        for num in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):  # the fraction converges fast on this side; use symmetry on the other
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom."""
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile_bisect(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t by bisection on :func:`t_cdf` (no scipy needed)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if p < 0.5:
        return -t_quantile_bisect(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        lo, hi = hi, 2.0 * hi
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


def t_quantile(p: float, df: float) -> float:
    """Student's t quantile: scipy's when installed, else :func:`t_quantile_bisect`."""
    try:
        from scipy.stats import t
    except ImportError:
        return t_quantile_bisect(p, df)
    return float(t.ppf(p, df))


def pair_by_seed(better: Mapping[int, float], worse: Mapping[int, float]) -> Tuple[List[int], List[float]]:
    """Seeds present in both, and ``better[s] - worse[s]`` for each (an unpaired seed is dropped)."""
    seeds = sorted(set(better) & set(worse))
    return seeds, [better[s] - worse[s] for s in seeds]


@dataclass
class Paired:
    """A paired comparison of ``n`` per-seed differences (claimed direction: positive)."""

    diffs: List[float]
    seeds: List[int] = field(default_factory=list)
    alpha: float = ALPHA
    power: float = POWER

    @property
    def n(self) -> int:
        return len(self.diffs)

    @property
    def mean(self) -> float:
        return sum(self.diffs) / self.n if self.n else math.nan

    @property
    def sd(self) -> float:
        if self.n < 2:
            return math.nan
        m = self.mean
        return math.sqrt(sum((d - m) ** 2 for d in self.diffs) / (self.n - 1))

    @property
    def se(self) -> float:
        return self.sd / math.sqrt(self.n) if self.n >= 2 else math.nan

    @property
    def ci(self) -> Tuple[float, float]:
        if self.n < 2:
            return -math.inf, math.inf
        half = t_quantile(1 - self.alpha / 2, self.n - 1) * self.se
        return self.mean - half, self.mean + half

    @property
    def mde(self) -> float:
        if self.n < 2:
            return math.inf
        df = self.n - 1
        return (t_quantile(1 - self.alpha / 2, df) + t_quantile(self.power, df)) * self.se

    @property
    def verdict(self) -> str:
        lo, hi = self.ci
        if lo > 0:
            return "confirmed"
        if hi < 0:
            return "contradicted"
        if self.n < 2:
            return "below what this run can detect (one seed: no spread, MDE unknown)"
        return f"below what this run can detect (MDE {self.mde:.1f} pt)"

    def summary(self) -> str:
        """``+0.50 +- 0.14 (n 5, 95 % CI +0.11..+0.89, MDE 0.53)``, differences in points."""
        if self.n < 2:
            return f"{self.mean:+.2f} (n {self.n})"
        lo, hi = self.ci
        return (f"{self.mean:+.2f} +- {self.se:.2f} (n {self.n}, {100 * (1 - self.alpha):.0f} % CI "
                f"{lo:+.2f}..{hi:+.2f}, MDE {self.mde:.2f})")


def compare(better: Mapping[int, float], worse: Mapping[int, float]) -> Paired:
    """Pair two variants' per-seed results and test the claim that ``better`` beats ``worse``."""
    seeds, diffs = pair_by_seed(better, worse)
    return Paired(diffs, seeds)


def seeds_needed(sd_diff: float, effect: float, alpha: float = ALPHA, power: float = POWER,
                 max_n: int = 1000) -> int:
    """The fewest seeds whose MDE, at per-seed spread ``sd_diff``, is at most ``effect``; ``max_n + 1``
    when even ``max_n`` seeds would not do."""
    for n in range(2, max_n + 1):
        if (t_quantile(1 - alpha / 2, n - 1) + t_quantile(power, n - 1)) * sd_diff / math.sqrt(n) <= effect:
            return n
    return max_n + 1
