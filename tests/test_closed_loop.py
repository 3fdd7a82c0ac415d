"""The closed-loop benchmark's control and statistics (``benchmarks/closed_loop.py``): the parts
that decide its verdict, checked without rendering a video."""

import importlib.util
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from vpo.pairs import Pair

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("closed_loop", ROOT / "benchmarks" / "closed_loop.py")
assert spec and spec.loader
closed_loop = importlib.util.module_from_spec(spec)
spec.loader.exec_module(closed_loop)


def test_volunteers_follow_the_rule_beyond_their_noise_and_are_deterministic():
    vote = closed_loop.vote
    assert all(vote(0, v, f"t{v}", 0.5, 0.3, 0.01, 0.004) == "a" for v in range(50))
    assert all(vote(0, v, f"t{v}", 0.3, 0.5, 0.01, 0.004) == "b" for v in range(50))
    assert all(vote(0, v, f"t{v}", 0.4, 0.4, 1e-6, 0.004) == "tie" for v in range(50))
    choices = [vote(3, 1, f"trial {i}", 0.4, 0.4, 0.01, 0.004) for i in range(200)]
    assert choices == [vote(3, 1, f"trial {i}", 0.4, 0.4, 0.01, 0.004) for i in range(200)]
    assert {"a", "b", "tie"} <= set(choices)  # equal videos: the noise decides


def test_the_control_keeps_the_trials_and_each_vote_list_but_detaches_them():
    votes = [["a", "a", "a"], ["b", "tie", "b"], ["tie", "tie", "a"], ["b", "b", "b"], ["a", "b", "tie"]] * 8
    pairs = [Pair(f"p{k}", Path(f"v{k}a.npy"), Path(f"v{k}b.npy"), c) for k, trial in enumerate(votes) for c in trial]
    control = closed_loop.shuffled_pairs(pairs, votes, seed=0)
    assert [(p.prompt, p.a, p.b) for p in control] == [(p.prompt, p.a, p.b) for p in pairs]
    lists = [tuple(p.choice for p in control[k * 3 : k * 3 + 3]) for k in range(len(votes))]
    assert Counter(lists) == Counter(map(tuple, votes))  # the same vote lists, unanimity and splits kept
    assert Counter(p.choice for p in control) == Counter(p.choice for p in pairs)
    assert sum(a != tuple(b) for a, b in zip(lists, votes)) > len(votes) // 2  # most trials got another list
    assert closed_loop.shuffled_pairs(pairs, votes, seed=0) == control  # one fixed permutation


def test_paired_bootstrap_of_the_win_rate_difference():
    boot = closed_loop.paired_bootstrap
    rng = np.random.default_rng(0)
    same = rng.integers(0, 6, size=(32, 2))
    assert boot(same, same, 0) == (0.0, 0.0, 0.0)  # a run against itself: 0 in every resample
    wins = np.tile([[6, 0]], (32, 1))
    assert boot(wins, wins[:, ::-1], 0) == (1.0, 1.0, 1.0)
    first = np.stack([rng.integers(3, 7, 32), rng.integers(0, 3, 32)], 1)  # every prompt favours it
    second = np.stack([rng.integers(0, 4, 32), rng.integers(0, 4, 32)], 1)
    diff, low, high = boot(first, second, 0)
    rates = first.sum(0)[0] / first.sum(), second.sum(0)[0] / second.sum()
    assert diff == pytest.approx(rates[0] - rates[1])
    assert 0 < low < diff < high < 1
    assert boot(first, second, 0) == (diff, low, high)  # seeded
