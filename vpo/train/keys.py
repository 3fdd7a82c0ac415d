"""The names of the metrics a training run reports, defined once: the loops write them, both sinks
and the ablations read them, and the dashboard gets ``DASHBOARD`` from its template. The table of
what each means is ``docs/metrics.md``."""

from __future__ import annotations

from typing import Any

# reward of this step's candidates on the trained source and dimension
REWARD_MEAN, REWARD_MAX, REWARD_MIN = "reward/mean", "reward/max", "reward/min"
REWARD_MARGIN = "reward/margin"  # winner minus loser, averaged over the step's pairs
GUARD_VETOED = "guard/vetoed"  # candidates the subject veto moved below the others (reward_guard = subject-veto)
# Flow-DPO (vpo/train/loss.py)
DPO_LOSS, DPO_IMPLICIT_ACC = "dpo/loss", "dpo/implicit_acc"
DPO_MSE_W, DPO_MSE_L, DPO_MSE_REF_W, DPO_MSE_REF_L = "dpo/mse_w", "dpo/mse_l", "dpo/mse_ref_w", "dpo/mse_ref_l"
DPO_GRAD_NORM = "dpo/grad_norm"
# Flow-RWR (vpo/train/online_rwr.py): the weighted loss, the unweighted flow-matching error of the
# candidates, and how peaked the softmax weights are (largest weight; effective sample size 1 / sum w^2,
# N when the weights are uniform, 1 when one candidate takes all)
RWR_LOSS, RWR_MSE, RWR_GRAD_NORM = "rwr/loss", "rwr/mse", "rwr/grad_norm"
RWR_WEIGHT_MAX, RWR_ESS = "rwr/weight_max", "rwr/ess"
DPO_PREFIX = "dpo/"
# ReFL (vpo/train/refl.py)
REFL_LOSS, REFL_GRAD_NORM = "refl/loss", "refl/grad_norm"
REFL_GRAD_STEPS, REFL_STOP_INDEX = "refl/grad_steps", "refl/stop_index"
# bookkeeping of the loop
SKIPPED_PROMPTS, REF_UPDATED = "train/skipped_prompts", "train/ref_updated"
PAIRS = "train/pairs"  # pairs the step trained on (over all ranks); weights the per-pair means across ranks
OFFLINE_PAIRS, OFFLINE_MARGIN = "train/offline_pairs", "train/offline_margin"
# time and memory
STEP_S, SAMPLE_S, SCORE_S, UPDATE_S = "perf/step_s", "perf/sample_s", "perf/score_s", "perf/update_s"
PEAK_MEM_MB, CUDA_PEAK_GB = "perf/peak_mem_mb", "perf/cuda_peak_gb"
PERF_PREFIX = "perf/"
HELDOUT_PREFIX = "heldout/"
# the reward source's raw measures the held-out monitor logs beside its dimensions
HELDOUT_RAW = ("temporal_flickering", "presence", "motion_extent")

# what a step is doing, reported to the sink's ``phase`` while it runs (the dashboard shows it live)
PHASE_LOADING = "loading model"
PHASE_PAIRS = "building the offline pairs"
PHASE_SAMPLING = "sampling candidates"
PHASE_SCORING = "scoring"
PHASE_UPDATING = "updating"
PHASE_HELDOUT = "held-out check"
PHASE_CHECKPOINT = "saving checkpoint"


def heldout(measure: str) -> str:
    """The held-out monitor's key of a dimension or raw measure: ``heldout/temporal``."""
    return f"{HELDOUT_PREFIX}{measure}"


# the shown progress of a run in the terminal (vpo/train/sinks.py)
PROGRESS = (REWARD_MEAN, REWARD_MARGIN, DPO_LOSS, DPO_IMPLICIT_ACC, RWR_LOSS, RWR_ESS)

# the dashboard's charts (webapp/experiments/static/experiments/dashboard.js), in sections shown as
# collapsible groups (W&B's sections), the first open: a chart draws ``lines``, an optional min-max
# ``band``, or every series whose name starts with ``prefix``. A logged metric no chart names still
# gets a chart of its own, in the section "Other" (the dashboard adds it).
DASHBOARD: list[dict[str, Any]] = [
    {
        "section": "Training",
        "open": True,
        "charts": [
            {
                "key": "reward",
                "title": "Reward (mean, min–max band)",
                "lines": [REWARD_MEAN],
                "band": [REWARD_MIN, REWARD_MAX],
            },
            {"key": "margin", "title": "Reward margin (winner − loser)", "lines": [REWARD_MARGIN]},
            {"key": "loss", "title": "Loss", "lines": [DPO_LOSS, REFL_LOSS, RWR_LOSS]},
            {"key": "acc", "title": "DPO implicit accuracy", "lines": [DPO_IMPLICIT_ACC]},
            {
                "key": "heldout",
                "title": "Held-out measures (not trained on: the reward-hacking alarm)",
                "prefix": HELDOUT_PREFIX,
            },
            {"key": "perf", "title": "Step time (s)", "lines": [STEP_S]},
        ],
    },
    {
        "section": "Optimisation",
        "charts": [
            {"key": "grad_norm", "title": "Gradient norm (before clipping)", "lines": [DPO_GRAD_NORM, REFL_GRAD_NORM]},
            {
                "key": "mse",
                "title": "Flow-matching MSE: policy and reference, winner and loser",
                "lines": [DPO_MSE_W, DPO_MSE_L, DPO_MSE_REF_W, DPO_MSE_REF_L],
            },
            {
                "key": "refl_steps",
                "title": "ReFL: steps with gradients, stop index",
                "lines": [REFL_GRAD_STEPS, REFL_STOP_INDEX],
            },
        ],
    },
    {
        "section": "Time and memory",
        "charts": [
            {"key": "phase_times", "title": "Phase times (s)", "lines": [SAMPLE_S, SCORE_S, UPDATE_S]},
            {"key": "memory", "title": "Peak memory (MB)", "lines": [PEAK_MEM_MB]},
            {"key": "cuda_memory", "title": "CUDA peak memory (GB)", "lines": [CUDA_PEAK_GB]},
        ],
    },
    {
        "section": "Loop",
        "charts": [
            {"key": "skipped", "title": "Skipped prompts (ties)", "lines": [SKIPPED_PROMPTS]},
            {"key": "vetoed", "title": "Candidates vetoed (subject veto)", "lines": [GUARD_VETOED]},
            {"key": "ref_updated", "title": "Reference updated", "lines": [REF_UPDATED]},
            {
                "key": "offline",
                "title": "Offline pair set: pairs, mean margin",
                "lines": [OFFLINE_PAIRS, OFFLINE_MARGIN],
            },
        ],
    },
]
