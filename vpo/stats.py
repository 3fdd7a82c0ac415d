"""Statistics of two-alternative forced-choice (2AFC) studies (formulas: ``docs/algorithm.md``, "Human studies").

* pairwise: win rate on non-tie votes, Wilson 95% interval and an exact two-sided binomial test
  against 0.5 (scipy's ``binomtest``), tie rate;
* left-side bias: the same test on how often the left clip was chosen (non-tie votes) — a voter
  who always clicks left shows up here, whatever the systems;
* Bradley–Terry ratings for three or more systems (a tie = half a win to each side), fitted by
  the MM algorithm (Hunter, "MM algorithms for generalized Bradley-Terry models", 2004, Eq. 3), on a
  log scale anchored so that the anchor system (the base model) is 0, with bootstrap 95%
  intervals from resampling votes. A system without a vote gets no rating (None), never one the
  prior alone made. The maximum-likelihood fit is plain MM when it exists (Hunter's condition: in
  every split of the systems into two groups, some system of each group beat one of the other,
  ties counting both ways); where it does not (a system that never lost, or never won) an optional
  prior — ``prior`` virtual ties of each system against an opponent of strength 1 — keeps the
  ratings finite. ``prior=None`` (the default) uses no prior when the MLE exists and 0.5 otherwise;
  the fit says which (``BTFit.prior``).

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


def t_half_width(x, confidence: float = 0.95) -> float:
    """Half-width of the t-interval of the mean of ``x`` (NaN for fewer than two values)."""
    from scipy import stats

    x = np.asarray(x, dtype=float)
    n = len(x)
    return float(stats.t.ppf(0.5 + confidence / 2, n - 1) * x.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan")


def bootstrap_mean_ci(x, draws: int = 10_000, seed: int = 0, confidence: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``x`` (values resampled with replacement)."""
    means = np.random.default_rng(seed).choice(np.asarray(x, dtype=float), (draws, len(x))).mean(1)
    lo, hi = np.percentile(means, [50 * (1 - confidence), 50 * (1 + confidence)])
    return float(lo), float(hi)


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
    k: int,
    first: np.ndarray,
    second: np.ndarray,
    score: np.ndarray,
    prior: float,
    iterations: int = 1000,
    tol: float = 1e-10,
) -> np.ndarray:
    """Log-strengths of k systems from votes given as index arrays, by MM iterations (Hunter 2004, Eq. 3:
    p_i <- W_i / sum_j n_ij / (p_i + p_j)), plus ``prior`` virtual ties of each system against an opponent
    of strength 1 (half a win and one game each). A system with no vote in the arrays gets NaN."""
    wins = np.bincount(first, score, k) + np.bincount(second, 1 - score, k)
    games = np.zeros((k, k))
    np.add.at(games, (first, second), 1)
    games += games.T
    voted = games.sum(1) > 0
    p = np.ones(k)
    for _ in range(iterations if voted.any() else 0):
        new = np.ones(k)
        with np.errstate(invalid="ignore", divide="ignore"):  # 0/0 for systems without votes, not used
            step = (wins + prior) / ((games / (p[:, None] + p[None, :])).sum(1) + 2 * prior / (p + 1))
        new[voted] = step[voted]
        new[voted] /= np.exp(np.log(new[voted]).mean())
        if np.abs(np.log(new) - np.log(p)).max() < tol:
            p = new
            break
        p = new
    return np.where(voted, np.log(p), np.nan)


def _arrays(systems, votes):
    index = {s: i for i, s in enumerate(systems)}
    first = np.array([index[a] for a, _, _ in votes], dtype=int)
    second = np.array([index[b] for _, b, _ in votes], dtype=int)
    return first, second, np.array([float(x) for _, _, x in votes])


def mle_exists(k: int, first: np.ndarray, second: np.ndarray, score: np.ndarray) -> bool:
    """Hunter's condition among the systems with votes: the 'beat' graph (i -> j when i won or tied against
    j at least once) is strongly connected, so every rating is finite without a prior."""
    beat = np.zeros((k, k), dtype=bool)
    beat[first[score > 0], second[score > 0]] = True
    beat[second[score < 1], first[score < 1]] = True
    voted = np.flatnonzero(np.bincount(first, minlength=k) + np.bincount(second, minlength=k))
    if len(voted) < 2:
        return False

    def reach(adj: np.ndarray) -> set[int]:
        seen, todo = {int(voted[0])}, [int(voted[0])]
        while todo:
            i = todo.pop()
            for j in np.flatnonzero(adj[i]):
                if int(j) not in seen:
                    seen.add(int(j))
                    todo.append(int(j))
        return seen

    return set(voted.tolist()) <= reach(beat) and set(voted.tolist()) <= reach(beat.T)


@dataclass(frozen=True)
class BTFit:
    ratings: dict[str, float | None]  # log-strength minus the anchor's; None for a system without votes
    prior: float  # virtual ties per system used (0: plain maximum likelihood)


def bradley_terry_fit(
    systems: list[str], votes: list[tuple[str, str, float]], anchor: str, prior: float | None = None
) -> BTFit:
    """Log-strengths (natural log) with ``anchor`` at 0. ``votes``: (first, second, score of first)
    with score 1 (first won), 0 (second won) or 0.5 (tie). ``prior``: None = none when the MLE exists,
    else 0.5 (module docstring)."""
    first, second, score = _arrays(systems, votes)
    if prior is None:
        prior = 0.0 if mle_exists(len(systems), first, second, score) else 0.5
    elif prior < 0:
        raise ValueError(f"prior must be >= 0, got {prior}")
    log_p = _fit(len(systems), first, second, score, prior)
    a = systems.index(anchor)
    if np.isnan(log_p[a]):
        return BTFit(dict.fromkeys(systems), prior)  # nothing to anchor on
    return BTFit({s: None if np.isnan(log_p[i]) else float(log_p[i] - log_p[a]) for i, s in enumerate(systems)}, prior)


def bradley_terry(
    systems: list[str], votes: list[tuple[str, str, float]], anchor: str, prior: float | None = None
) -> dict[str, float | None]:
    return bradley_terry_fit(systems, votes, anchor, prior).ratings


def bradley_terry_bootstrap(
    systems: list[str],
    votes: list[tuple[str, str, float]],
    anchor: str,
    samples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    prior: float | None = None,
) -> dict[str, tuple[float, float, float] | None]:
    """{system: (rating, low, high)}: the fit on all votes and a percentile bootstrap interval (votes
    resampled with replacement, each resample fitted with the prior of the full fit, or with 0.5 where the full
    fit needed none but the resample has no finite MLE; a resample in which a system has no vote says nothing
    about it and is left out of its interval). None for a system without
    votes (and for every system when the anchor has none)."""
    full = bradley_terry_fit(systems, votes, anchor, prior)
    first, second, score = _arrays(systems, votes)
    a = systems.index(anchor)
    rng = np.random.default_rng(seed)
    draws = np.full((samples, len(systems)), np.nan)
    if votes:
        for b in range(samples):
            idx = rng.integers(0, len(votes), len(votes))
            # a resample without a finite MLE (a system that never won in it) takes the default prior too
            # when the full fit needed none; else its rating there would be -inf or unbounded
            prior_b = full.prior or (0.0 if mle_exists(len(systems), first[idx], second[idx], score[idx]) else 0.5)
            log_p = _fit(len(systems), first[idx], second[idx], score[idx], prior_b)
            draws[b] = log_p - log_p[a]
    out: dict[str, tuple[float, float, float] | None] = {}
    for i, s in enumerate(systems):
        rating = full.ratings[s]
        column = draws[:, i][np.isfinite(draws[:, i])]
        if rating is None or len(column) == 0:
            out[s] = None
            continue
        lo, hi = np.percentile(column, [50 * (1 - confidence), 50 * (1 + confidence)])
        out[s] = (rating, float(lo), float(hi))
    return out
