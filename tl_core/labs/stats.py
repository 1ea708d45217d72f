"""Seeds and intervals: the statistics every lab's verdict uses (pure numpy).

A lab runs k seeds; the seeds vary the initialisation and the batch order, never the data split, so the
runs of one seed are PAIRED with each other. A claim compares two things seed by seed (e.g. best accuracy
of a transfer strategy minus scratch's): ``paired(diffs)`` takes those seed-level differences, oriented
so that > 0 is the side theory predicts, and gives their mean, a 95% percentile bootstrap interval of the
mean (the seed-level differences resampled with replacement, a seeded generator: deterministic) and the
verdict: "agrees" when the interval excludes 0 on the predicted side, "disagrees" when it excludes 0 on
the other side, "inconclusive" otherwise. With one seed there is no interval: the lab's single-seed rule
decides (a difference beyond ``TOL``), and the verdict says "single seed".
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

TOL = 0.02  # accuracy differences below 2 points count as "similar" (a few validation images)
LEVEL = 0.95
RESAMPLES = 2000
BOOT_SEED = 0

VERDICT_RULE = ("Verdict rule: each claim compares runs seed by seed (same split, so the seeds are paired); it "
                "**agrees** when the 95% bootstrap interval of the mean paired difference lies entirely on the "
                "side theory predicts, **disagrees** when it lies entirely on the other side and is "
                "**inconclusive** when it contains 0 (with a single seed there is no interval: a difference "
                f"beyond {TOL * 100:.0f} points decides, labelled \"single seed\").")

UNPAIRED_VERDICT_RULE = ("Verdict rule: each seed splits the data its own way, so the seeds are independent repeats, "
                         "not pairs; a claim **agrees** when the 95% bootstrap interval (over the seeds and their "
                         "validation images) lies entirely on the side theory predicts, **disagrees** when it lies "
                         "entirely on the other side and is **inconclusive** when it contains 0.")

AGREES, DISAGREES, INCONCLUSIVE = "agrees", "disagrees", "inconclusive"
_AS_BOOL = {AGREES: True, DISAGREES: False, INCONCLUSIVE: None}


def bootstrap_interval(values: Sequence[float], level: float = LEVEL, resamples: int = RESAMPLES,
                       seed: int = BOOT_SEED) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (one value per seed). One value: (v, v)."""
    v = np.asarray(list(values), dtype=float)
    if v.size == 0:
        raise ValueError("bootstrap_interval needs at least one value")
    if v.size == 1:
        return float(v[0]), float(v[0])
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(resamples, v.size))].mean(axis=1)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(means, [alpha, 1 - alpha])
    return float(lo), float(hi)


def tol_rule(tol: float = TOL) -> Callable[[float], bool | None]:
    """The single-seed rule most claims use: beyond ``tol`` on either side decides, otherwise undecided."""
    return lambda d: True if d > tol else False if d < -tol else None


@dataclass(frozen=True)
class Spread:
    """One quantity over seeds: per-seed values, mean, 95% bootstrap interval of the mean, min and max."""

    values: tuple[float, ...]
    mean: float
    lo: float
    hi: float
    min: float
    max: float

    @property
    def n(self) -> int:
        return len(self.values)


def spread(values: Sequence[float | None]) -> Spread | None:
    """``Spread`` of the values that are not None (None: there are none)."""
    v = tuple(float(x) for x in values if x is not None)
    if not v:
        return None
    lo, hi = bootstrap_interval(v)
    return Spread(v, float(np.mean(v)), lo, hi, min(v), max(v))


@dataclass(frozen=True)
class Paired(Spread):
    """Seed-level paired differences (``values``, > 0: the predicted side) and what they say."""

    verdict: str = INCONCLUSIVE  # agrees | disagrees | inconclusive

    @property
    def diffs(self) -> tuple[float, ...]:
        return self.values

    @property
    def single(self) -> bool:
        return self.n == 1

    @property
    def agrees(self) -> bool | None:
        return _AS_BOOL[self.verdict]

    def describe(self, fmt: Callable[[float], str], sign: float = 1.0) -> str:
        """"+5.2 pts" (single seed) or "+5.2 pts [95%: +3.1, +7.0]" (``sign`` -1 flips the orientation back)."""
        lo, hi = sorted((self.lo * sign, self.hi * sign))
        return fmt(self.mean * sign) if self.single else f"{fmt(self.mean * sign)} [95%: {fmt(lo)}, {fmt(hi)}]"


def paired(diffs: Sequence[float], single_rule: Callable[[float], bool | None] | None = None,
           resamples: int = RESAMPLES, seed: int = BOOT_SEED) -> Paired:
    """The verdict on seed-level paired differences (see the module doc). ``single_rule``: the lab's
    one-seed rule (default ``tol_rule()``), True/False/None → agrees/disagrees/inconclusive."""
    d = tuple(float(x) for x in diffs)
    if not d:
        raise ValueError("paired needs at least one seed's difference")
    mean = float(np.mean(d))
    if len(d) == 1:
        return Paired(d, mean, mean, mean, mean, mean, verdict_of((single_rule or tol_rule())(d[0])))
    lo, hi = bootstrap_interval(d, resamples=resamples, seed=seed)
    verdict = AGREES if lo > 0 else DISAGREES if hi < 0 else INCONCLUSIVE
    return Paired(d, mean, lo, hi, min(d), max(d), verdict)


def verdict_of(agrees: bool | None) -> str:
    """True / None / False → "agrees" / "inconclusive" / "disagrees"."""
    return AGREES if agrees else INCONCLUSIVE if agrees is None else DISAGREES


def interval_text(s: Spread | Paired | None, scale: float = 100.0, unit: str = "%", signed: bool = False) -> str:
    """A spread's or a paired difference's interval as text: "78.0–82.3%" (defaults), "+1.2–+3.4 pts"
    (``unit=" pts", signed=True``), "0.5–1.0" epochs (``scale=1, unit=""``)."""
    if s is None:
        return "–"
    f = "{:+.1f}" if signed else "{:.1f}"
    return f"{f.format(s.lo * scale)}–{f.format(s.hi * scale)}{unit}"


# ----------------------------------------------------------------------------- rank correlation (kornblith)


def _spearman_rows(x: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Spearman's ρ of ``x`` [n] with each row of ``ys`` [rows, n] (ties share their mean rank; 0 for a row
    or an ``x`` without spread: all values tied, no ordering to agree with)."""
    from scipy.stats import rankdata

    rx = rankdata(x) - (len(x) + 1) / 2
    ry = rankdata(ys, axis=1)
    ry -= ry.mean(axis=1, keepdims=True)
    den = np.sqrt((rx ** 2).sum() * (ry ** 2).sum(axis=1))
    return np.divide(ry @ rx, den, out=np.zeros(len(ys)), where=den > 0)


def rank_correlation(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation of ``x`` and ``y`` (see ``_spearman_rows`` for ties)."""
    x, y = np.asarray(list(x), dtype=float), np.asarray(list(y), dtype=float)
    if len(x) != len(y) or len(x) < 2:
        raise ValueError(f"rank_correlation needs two sequences of the same length >= 2, not {len(x)} and {len(y)}")
    return float(_spearman_rows(x, y[None])[0])


@dataclass(frozen=True)
class RankCorrelation:
    """Spearman's ρ between a score of each item (e.g. a network's ImageNet top-1) and its accuracy, with a
    95% bootstrap interval over the seeds and the validation images, and each item's accuracy with its own
    interval from the same resamples."""

    rho: float
    lo: float
    hi: float
    accuracy: tuple[float, ...]  # per item: mean over the seeds of its accuracy on that seed's images
    acc_lo: tuple[float, ...]
    acc_hi: tuple[float, ...]
    seeds: int
    images: tuple[int, ...]  # validation images of each seed

    @property
    def verdict(self) -> str:
        """agrees (interval above 0) | disagrees (below 0) | inconclusive (contains 0)."""
        return AGREES if self.lo > 0 else DISAGREES if self.hi < 0 else INCONCLUSIVE

    @property
    def agrees(self) -> bool | None:
        return _AS_BOOL[self.verdict]


def bootstrap_rank_correlation(score: Sequence[float], correct: Sequence, level: float = LEVEL,
                               resamples: int = RESAMPLES, seed: int = BOOT_SEED) -> RankCorrelation:
    """Spearman's ρ between ``score`` (one value per item) and the items' accuracy, with a two-level
    percentile bootstrap: ``correct`` holds one 0/1 matrix per seed, [items, that seed's validation images]
    (every item judged on the same images within a seed: resampling an image resamples it for every item).
    Each resample draws the seeds with replacement, then within each drawn seed its images with replacement;
    an item's accuracy is the mean over the drawn seeds. Deterministic (seeded generator)."""
    x = np.asarray(list(score), dtype=float)
    mats = [np.asarray(c, dtype=float) for c in correct]
    if len(x) < 2 or not mats:
        raise ValueError("bootstrap_rank_correlation needs at least two items and one seed")
    for m in mats:
        if m.ndim != 2 or m.shape[0] != len(x) or m.shape[1] < 1:
            raise ValueError(f"each seed's correctness must be [{len(x)} items, >= 1 images], not {list(m.shape)}")
    rng = np.random.default_rng(seed)
    per_seed = np.stack([rng.multinomial(m.shape[1], np.full(m.shape[1], 1 / m.shape[1]), size=resamples)
                         @ m.T / m.shape[1] for m in mats])  # [seeds, resamples, items]
    draw = rng.integers(0, len(mats), size=(resamples, len(mats)))
    boot = per_seed[draw, np.arange(resamples)[:, None]].mean(axis=1)  # [resamples, items]
    rhos = _spearman_rows(x, boot)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(rhos, [alpha, 1 - alpha])
    acc = np.mean([m.mean(axis=1) for m in mats], axis=0)
    acc_lo, acc_hi = np.quantile(boot, [alpha, 1 - alpha], axis=0)
    return RankCorrelation(rank_correlation(x, acc), float(lo), float(hi), tuple(map(float, acc)),
                           tuple(map(float, acc_lo)), tuple(map(float, acc_hi)), len(mats),
                           tuple(m.shape[1] for m in mats))
