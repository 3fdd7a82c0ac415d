"""Statistics of two-alternative forced-choice (2AFC) studies (formulas: ``docs/algorithm.md``, "Human studies").

* pairwise: win rate on non-tie votes, Wilson 95% interval and an exact two-sided binomial test
  against 0.5 (scipy's ``binomtest``), tie rate;
* left-side bias: the same test on how often the left clip was chosen (non-tie votes) — a voter
  who always clicks left shows up here, whatever the systems;
* Bradley–Terry ratings for three or more systems (a tie = half a win to each side), fitted by
  the MM algorithm (Hunter, "MM algorithms for generalized Bradley-Terry models", 2004), on a
  log scale anchored so that the anchor system (the base model) is 0, with bootstrap 95%
  intervals from resampling votes.

No Django here: the study results page and the CLI call the same functions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import binomtest


@dataclass(frozen=True)
class PairResult:
    a: str
    b: str
    votes: int  # all votes between a and b, ties included
    wins_a: int
    wins_b: int
    ties: int
    win_rate_a: float | None  # wins_a / (wins_a + wins_b); None without a non-tie vote
    ci_low: float | None  # Wilson 95% interval of win_rate_a
    ci_high: float | None
    p_value: float | None  # exact two-sided binomial test of win_rate_a = 0.5
    tie_rate: float | None


def pairwise(a: str, b: str, wins_a: int, wins_b: int, ties: int, confidence: float = 0.95) -> PairResult:
    n = wins_a + wins_b
    total = n + ties
    if n == 0:
        return PairResult(a, b, total, wins_a, wins_b, ties, None, None, None, None, ties / total if total else None)
    test = binomtest(wins_a, n, 0.5)
    ci = test.proportion_ci(confidence_level=confidence, method="wilson")
    return PairResult(
        a, b, total, wins_a, wins_b, ties, wins_a / n, float(ci.low), float(ci.high), float(test.pvalue), ties / total
    )


@dataclass(frozen=True)
class BiasResult:
    left: int
    right: int
    left_rate: float | None
    p_value: float | None
    biased: bool  # p < alpha


def side_bias(left: int, right: int, alpha: float = 0.05) -> BiasResult:
    """Is the left clip chosen more (or less) often than chance? Non-tie votes only."""
    n = left + right
    if n == 0:
        return BiasResult(0, 0, None, None, False)
    p = float(binomtest(left, n, 0.5).pvalue)
    return BiasResult(left, right, left / n, p, p < alpha)


def _fit(
    k: int, first: np.ndarray, second: np.ndarray, score: np.ndarray, iterations: int = 1000, tol: float = 1e-10
) -> np.ndarray:
    """Log-strengths of k systems from votes given as index arrays, by MM iterations."""
    wins = np.bincount(first, score, k) + np.bincount(second, 1 - score, k)
    games = np.zeros((k, k))
    np.add.at(games, (first, second), 1)
    games += games.T
    # a system that never won (or never lost) has no finite maximum-likelihood strength: one
    # virtual tie against an average opponent (strength 1) keeps every rating finite
    prior = 0.5
    p = np.ones(k)
    for _ in range(iterations):
        new = (wins + prior) / ((games / (p[:, None] + p[None, :])).sum(1) + 2 * prior / (p + 1))
        new /= np.exp(np.log(new).mean())
        if np.abs(np.log(new) - np.log(p)).max() < tol:
            return np.log(new)
        p = new
    return np.log(p)


def _arrays(systems, votes):
    index = {s: i for i, s in enumerate(systems)}
    first = np.array([index[a] for a, _, _ in votes], dtype=int)
    second = np.array([index[b] for _, b, _ in votes], dtype=int)
    return first, second, np.array([float(x) for _, _, x in votes])


def bradley_terry(systems: list[str], votes: list[tuple[str, str, float]], anchor: str) -> dict[str, float]:
    """Log-strengths (natural log) with ``anchor`` at 0. ``votes``: (first, second, score of first)
    with score 1 (first won), 0 (second won) or 0.5 (tie)."""
    log_p = _fit(len(systems), *_arrays(systems, votes))
    a = systems.index(anchor)
    return {s: float(log_p[i] - log_p[a]) for i, s in enumerate(systems)}


def bradley_terry_bootstrap(
    systems: list[str],
    votes: list[tuple[str, str, float]],
    anchor: str,
    samples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, tuple[float, float, float]]:
    """{system: (rating, low, high)}: the fit on all votes and a percentile bootstrap interval
    (votes resampled with replacement)."""
    rating = bradley_terry(systems, votes, anchor)
    first, second, score = _arrays(systems, votes)
    a = systems.index(anchor)
    rng = np.random.default_rng(seed)
    draws = np.empty((samples, len(systems)))
    for b in range(samples):
        idx = rng.integers(0, len(votes), len(votes))
        log_p = _fit(len(systems), first[idx], second[idx], score[idx])
        draws[b] = log_p - log_p[a]
    lo, hi = np.percentile(draws, [50 * (1 - confidence), 50 * (1 + confidence)], axis=0)
    return {s: (rating[s], float(lo[i]), float(hi[i])) for i, s in enumerate(systems)}
