"""2AFC statistics: known answers and simulated voters."""

import numpy as np
import pytest
from scipy.stats import binomtest

from vpo.stats import bradley_terry, bradley_terry_bootstrap, pairwise, side_bias


@pytest.mark.parametrize("wins_a, wins_b", [(37, 21), (5, 0), (50, 50), (1, 99)])
def test_wilson_interval_and_binomial_p_equal_scipy(wins_a, wins_b):
    r = pairwise("a", "b", wins_a, wins_b, ties=4)
    ref = binomtest(wins_a, wins_a + wins_b, 0.5)
    ci = ref.proportion_ci(confidence_level=0.95, method="wilson")
    assert r.win_rate_a == wins_a / (wins_a + wins_b)
    assert (r.ci_low, r.ci_high) == pytest.approx((ci.low, ci.high), abs=1e-12)
    assert r.p_value == pytest.approx(ref.pvalue, abs=1e-12)
    assert r.tie_rate == 4 / (wins_a + wins_b + 4) and r.votes == wins_a + wins_b + 4


def test_wilson_by_hand_for_37_of_58():
    # Wilson score interval: (p + z^2/2n +- z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n)
    n, p, z = 58, 37 / 58, 1.959963984540054
    centre, half = p + z * z / (2 * n), z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    r = pairwise("a", "b", 37, 21, 0)
    assert r.ci_low == pytest.approx((centre - half) / (1 + z * z / n))
    assert r.ci_high == pytest.approx((centre + half) / (1 + z * z / n))


def test_only_ties_give_no_win_rate_but_a_tie_rate():
    r = pairwise("a", "b", 0, 0, ties=3)
    assert r.win_rate_a is None and r.p_value is None and r.tie_rate == 1.0


def test_bradley_terry_recovers_the_order_of_three_simulated_systems():
    rng = np.random.default_rng(0)
    strength = {"base": 0.0, "tuned": 0.7, "best": 1.5}  # log-strengths
    systems = list(strength)
    votes = []
    for _ in range(600):
        a, b = rng.choice(systems, 2, replace=False)
        p_a = 1 / (1 + np.exp(strength[b] - strength[a]))
        u = rng.random()
        votes.append((a, b, 0.5 if abs(u - p_a) < 0.05 else float(u < p_a)))  # some ties
    fit = bradley_terry_bootstrap(systems, votes, anchor="base", samples=300)
    assert fit["base"] == (0.0, 0.0, 0.0)  # the anchor
    assert 0 < fit["tuned"][0] < fit["best"][0]
    assert fit["tuned"][1] > 0  # its whole interval is above the base
    for s in ("tuned", "best"):
        rating, lo, hi = fit[s]
        assert lo <= rating <= hi and lo <= strength[s] <= hi, (s, fit[s])


def test_bradley_terry_stays_finite_when_a_system_never_wins():
    fit = bradley_terry(["a", "b"], [("a", "b", 1.0)] * 20, anchor="a")
    assert np.isfinite(fit["b"]) and fit["b"] < -1


def test_the_bias_test_flags_an_always_left_voter_and_not_a_fair_one():
    rng = np.random.default_rng(1)
    always_left = side_bias(left=60, right=0)
    assert always_left.biased and always_left.left_rate == 1.0
    fair = rng.random(60) < 0.5
    assert not side_bias(int(fair.sum()), int((~fair).sum())).biased
