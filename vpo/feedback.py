"""Feedback-source analysis (OnlineVPO Sec. 3.2, Table 2, Eq. 5): how often does a reward source
put the video a person preferred on top?

Given groups of candidate videos for one prompt in which a person chose the best, rank each group
by a source's score on a dimension (higher first) and report

* MRR = (1/|Q|) * sum_i 1 / rank_i   (Eq. 5; rank_i of the human choice in group i), and
* Recall@k = share of groups whose human choice ranks in the top k.

Ties are broken against the source: a chosen video tied with others ranks after all of them, so
a source that gives every candidate the same score gets no credit for it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

KS = (1, 2, 4)


@dataclass(frozen=True)
class Group:
    prompt: str
    videos: np.ndarray  # uint8 (N, F, H, W, C), N >= 2
    chosen: int  # index of the video the person preferred


def rank_of_chosen(scores, chosen: int) -> int:
    """1-based rank of ``scores[chosen]`` when sorted high to low, ties counted against it."""
    scores = np.asarray(scores, dtype=float)
    if np.isnan(scores).any():
        raise ValueError("a score in the group is NaN (unavailable); the group cannot be ranked")
    if not 0 <= chosen < len(scores):
        raise ValueError(f"chosen index {chosen} is outside a group of {len(scores)}")
    return int((scores >= scores[chosen]).sum())


def mrr_recall(ranks: list[int], ks=KS) -> dict[str, float]:
    if not ranks:
        raise ValueError("no groups to evaluate")
    r = np.asarray(ranks, dtype=float)
    return {"groups": len(ranks), "mrr": float((1 / r).mean()), **{f"recall@{k}": float((r <= k).mean()) for k in ks}}


def analyse(source, dimension: str, groups: list[Group]) -> dict[str, float]:
    """MRR and Recall@k of ``source`` on ``dimension`` against the people's choices."""
    import torch

    source.check_dimension(dimension)
    ranks = []
    for g in groups:
        if len(g.videos) < 2:
            raise ValueError(f"a group needs at least 2 candidates, got {len(g.videos)} for {g.prompt!r}")
        scores = source.score(torch.as_tensor(g.videos), [g.prompt] * len(g.videos)).scores[dimension]
        ranks.append(rank_of_chosen(scores.numpy(), g.chosen))
    return {"source": source.name, "dimension": dimension, **mrr_recall(ranks)}
