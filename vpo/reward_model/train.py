"""``vpo reward-model train``: a reward model from preference pairs (``docs/reward-model.md``).

1. read the pairs (``vpo/pairs.py``) and split them by *trial* (the unordered pair of videos with
   its prompt, so that repeated votes on one trial never straddle the split) into training,
   validation (early stopping) and held-out (the reported accuracy; never seen while training);
2. encode every (video, prompt) once through the frozen blocks at ``copies`` noise levels: sigma 0
   and one draw in each of ``copies - 1`` equal strata of (0, 1) (the noisy copies are what lets
   the same model guide sampling, Flow-NRG);
3. train one head per dimension with the Bradley–Terry-with-ties loss (``loss.py``): a pair's two
   videos at the same noise stratum; AdamW; stop when the validation loss has not improved for
   ``patience`` epochs and keep the best epoch's heads;
4. held-out pairwise accuracy (non-tie pairs: does the higher reward go to the chosen video?) at
   sigma 0 and over the noisy copies, with Wilson 95% intervals, next to the ``metrics`` source's
   accuracy on the same pairs; written to ``reward_model.json`` with the heads.
"""

from __future__ import annotations

import math
import random
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from vpo.pairs import Pair, dimensions, load_video, read_pairs
from vpo.reward_model.loss import OUTCOME, THETA, bt_ties_loss
from vpo.reward_model.model import DEPTH, HIDDEN, NoisyRewardModel
from vpo.stats import pairwise

MIN_PAIRS = 10


@dataclass
class RewardModelConfig:
    heldout: float = field(default=0.2, metadata={"help": "share of trials held out for the reported accuracy"})
    validation: float = field(default=0.15, metadata={"help": "share of the other trials for early stopping"})
    copies: int = field(default=4, metadata={"help": "noise levels per video: sigma 0 and copies - 1 strata"})
    depth: int = field(default=DEPTH, metadata={"help": "frozen tiny blocks the heads read"})
    hidden: int = field(default=HIDDEN, metadata={"help": "hidden width of each head"})
    epochs: int = field(default=300, metadata={"help": "most epochs"})
    patience: int = field(default=25, metadata={"help": "early stopping: epochs without a better validation loss"})
    batch_size: int = field(default=64, metadata={"help": "pairs per optimizer step"})
    lr: float = field(default=1e-3, metadata={"help": "AdamW learning rate"})
    weight_decay: float = field(default=0.05, metadata={"help": "AdamW weight decay"})
    theta: float = field(default=THETA, metadata={"help": "Rao-Kupper tie parameter (VideoAlign: 5)"})
    seed: int = field(default=0, metadata={"help": "seed of the split, the noise and the training order"})

    def __post_init__(self) -> None:
        for name in ("heldout", "validation"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        for name in ("copies", "depth", "hidden", "epochs", "patience", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0 or not self.weight_decay >= 0:
            raise ValueError("lr must be > 0 and weight_decay >= 0")
        if not self.theta > 1:
            raise ValueError(f"theta must be > 1, got {self.theta}")


@dataclass
class Trained:
    model: NoisyRewardModel
    meta: dict  # what reward_model.json holds
    heldout: list[Pair]  # the held-out pairs, for callers that check them against something else


def trial_key(p: Pair) -> str:
    a, b = sorted((str(p.a), str(p.b)))
    return f"{p.prompt}\0{a}\0{b}"


def split(pairs: list[Pair], cfg: RewardModelConfig) -> tuple[list[Pair], list[Pair], list[Pair]]:
    """(train, validation, held-out) by trial, in a seeded order that does not depend on the file's."""
    keys = sorted({trial_key(p) for p in pairs}, key=lambda k: zlib.crc32(f"{cfg.seed}:{k}".encode()))
    n_held = math.ceil(cfg.heldout * len(keys)) if cfg.heldout else 0
    rest = len(keys) - n_held
    # with fewer than 4 trials left there is no validation set: training stops on its own loss
    n_val = math.ceil(cfg.validation * rest) if cfg.validation and rest >= 4 else 0
    if rest - n_val < 1:
        raise ValueError(
            f"{len(keys)} distinct trials leave none to train on after holding out {n_held}: add pairs or lower heldout"
        )
    held, val = set(keys[:n_held]), set(keys[n_held : n_held + n_val])
    parts: tuple[list[Pair], list[Pair], list[Pair]] = ([], [], [])
    for p in pairs:
        k = trial_key(p)
        parts[2 if k in held else 1 if k in val else 0].append(p)
    return parts


def noise_levels(n_items: int, copies: int, generator: torch.Generator) -> torch.Tensor:
    """(n_items, copies): column 0 is 0 (clean), column k >= 1 one draw in ((k-1)/(copies-1), k/(copies-1))."""
    sigma = torch.zeros(n_items, copies)
    if copies > 1:
        strata = torch.arange(copies - 1, dtype=torch.float32)
        sigma[:, 1:] = (strata + torch.rand(n_items, copies - 1, generator=generator)) / (copies - 1)
    return sigma.clamp(max=0.999)


@torch.no_grad()
def encode(
    model: NoisyRewardModel,
    items: list[tuple[Path, str]],
    copies: int,
    seed: int,
    progress: bool,
    batch: int = 16,
) -> torch.Tensor:
    """Features (n_items, copies, 4D) of every (video, prompt) at its noise levels."""
    g = torch.Generator().manual_seed(seed)
    sigma = noise_levels(len(items), copies, g)
    out = []
    bar = tqdm(total=len(items), desc="encode", disable=not progress)
    for start in range(0, len(items), batch):
        chunk = items[start : start + batch]
        # one at a time: an mp4 read at display size is averaged down to the model's size
        x0 = torch.cat([model.latents(load_video(path)[None]) for path, _ in chunk])
        text = model.backbone.encode_prompts([prompt for _, prompt in chunk])
        per_copy = []
        for k in range(copies):
            s = sigma[start : start + len(chunk), k].to(x0.device)
            eps = torch.randn(x0.shape, generator=g).to(x0.device)
            s5 = s.view(-1, 1, 1, 1, 1)
            per_copy.append(model.features((1 - s5) * x0 + s5 * eps, s, text).cpu())
        out.append(torch.stack(per_copy, 1))
        bar.update(len(chunk))
    bar.close()
    return torch.cat(out)


def pair_tensors(pairs: list[Pair], index: dict[tuple[Path, str], int], heads: list[str]):
    ia = torch.tensor([index[(p.a, p.prompt)] for p in pairs], dtype=torch.long)
    ib = torch.tensor([index[(p.b, p.prompt)] for p in pairs], dtype=torch.long)
    outcome = torch.tensor([OUTCOME[p.choice] for p in pairs], dtype=torch.long)
    head = torch.tensor([heads.index(p.dimension) for p in pairs], dtype=torch.long)
    return ia, ib, outcome, head


def pair_rewards(model: NoisyRewardModel, feats: torch.Tensor, ia, ib, head, copy) -> tuple[torch.Tensor, torch.Tensor]:
    """Each pair's rewards (r_a, r_b) from its own head, both videos at noise copy ``copy`` (P,)."""
    rows = torch.arange(len(ia))
    scores_a = torch.stack(list(model.head_scores(feats[ia, copy]).values()), 1)  # (P, heads)
    scores_b = torch.stack(list(model.head_scores(feats[ib, copy]).values()), 1)
    return scores_a[rows, head], scores_b[rows, head]


def accuracy(r_a: torch.Tensor, r_b: torch.Tensor, pairs: list[Pair]) -> dict:
    """Share of the non-tie pairs whose chosen video has the strictly higher score, Wilson 95%."""
    right = wrong = 0
    for x, y, p in zip(r_a.tolist(), r_b.tolist(), pairs):
        if p.choice == "tie":
            continue
        better = x > y if p.choice == "a" else y > x
        right, wrong = right + better, wrong + (not better)
    result = pairwise("right", "wrong", right, wrong, 0)
    return {"pairs": right + wrong, "accuracy": result.win_rate_a, "low": result.ci_low, "high": result.ci_high}


def metrics_accuracy(pairs: list[Pair]) -> dict:
    """The ``metrics`` source's accuracy on ``pairs``: each pair's dimension if the source has it,
    else ``global``."""
    from vpo.rewards import GLOBAL, load_reward

    source = load_reward("metrics")
    videos: dict[tuple[Path, str], int] = {}
    for p in pairs:
        for path in (p.a, p.b):
            if (path, p.prompt) not in videos:
                videos[(path, p.prompt)] = len(videos)
    keys = list(videos)
    frames = [load_video(path) for path, _ in keys]
    if len({f.shape for f in frames}) > 1:
        return {"pairs": 0, "accuracy": None, "low": None, "high": None, "note": "videos of different sizes"}
    scores = source.score(np.stack(frames), [prompt for _, prompt in keys]).scores
    used = {p.dimension if p.dimension in source.dimensions else GLOBAL for p in pairs}

    def s(path, prompt, dim):
        return float(scores[dim if dim in source.dimensions else GLOBAL][videos[(path, prompt)]])

    r_a = torch.tensor([s(p.a, p.prompt, p.dimension) for p in pairs])
    r_b = torch.tensor([s(p.b, p.prompt, p.dimension) for p in pairs])
    return {**accuracy(r_a, r_b, pairs), "dimensions": sorted(used)}


def fit(model: NoisyRewardModel, feats: torch.Tensor, tr, va, optimizer, cfg: RewardModelConfig, bar):
    """Step 3: epochs of the BT-with-ties loss over the training pairs, each pair's two videos at
    one random noise copy; returns (the best epoch's head weights, that epoch, the validation
    losses), stopping ``patience`` epochs after the best."""
    g = torch.Generator().manual_seed(cfg.seed)
    best, best_state, best_epoch, curve = math.inf, None, 0, []
    for epoch in bar:
        model.train()
        order = torch.randperm(len(tr[0]), generator=g)
        for start in range(0, len(order), cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            ia, ib, outcome, head = (t[idx] for t in tr)
            copy = torch.randint(cfg.copies, (len(idx),), generator=g)  # a pair's videos share the stratum
            r_a, r_b = pair_rewards(model, feats, ia, ib, head, copy)
            loss = bt_ties_loss(r_a, r_b, outcome, cfg.theta)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            ia, ib, outcome, head = va
            losses = [
                bt_ties_loss(*pair_rewards(model, feats, ia, ib, head, k), outcome, cfg.theta)
                for k in range(cfg.copies)
            ]
            val_loss = float(torch.stack(losses).mean())
        curve.append(round(val_loss, 5))
        bar.set_postfix(val_loss=f"{val_loss:.4f}", best=f"{best:.4f}")
        if val_loss < best - 1e-5:
            best, best_epoch = val_loss, epoch + 1
            best_state = {k: v.detach().clone() for k, v in model.heads.state_dict().items()}
        elif epoch + 1 - best_epoch >= cfg.patience:
            break
    assert best_state is not None  # the first epoch's loss is finite or the data is broken
    return best_state, best_epoch, curve


def train_reward_model(
    pairs_path,
    out,
    cfg: RewardModelConfig | None = None,
    device: str = "cpu",
    progress: bool = True,
    backbone=None,
) -> Trained:
    """Steps 1-4 of the module docstring; the model is saved into ``out``."""
    cfg = cfg or RewardModelConfig()
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)

    # 1. pairs and the split by trial
    pairs = read_pairs(pairs_path)
    if len(pairs) < MIN_PAIRS:
        raise ValueError(f"{pairs_path}: {len(pairs)} pairs; a reward model needs at least {MIN_PAIRS}")
    heads = dimensions(pairs)
    train, val, held = split(pairs, cfg)
    if not val:  # too few trials for a validation set: stop on the training loss
        val = train

    # 2. features of every (video, prompt) at its noise levels, through the frozen blocks
    if backbone is None:
        from vpo.backbones import load_backbone

        backbone = load_backbone("tiny", device=device)
    model = NoisyRewardModel(backbone, heads, depth=cfg.depth, hidden=cfg.hidden)
    items = list(dict.fromkeys((path, p.prompt) for p in pairs for path in (p.a, p.b)))
    index = {item: i for i, item in enumerate(items)}
    feats = encode(model, items, cfg.copies, cfg.seed, progress).to(backbone.device)
    train_items = sorted({index[(path, p.prompt)] for p in train for path in (p.a, p.b)})
    flat = feats[train_items].flatten(0, 1)
    model.feature_mean.copy_(flat.mean(0))
    model.feature_std.copy_(flat.std(0).clamp_min(1e-4))

    # 3. heads trained with the BT-with-ties loss; early stopping on the validation loss
    tr, va = pair_tensors(train, index, heads), pair_tensors(val, index, heads)
    optimizer = torch.optim.AdamW(model.heads.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    bar = tqdm(range(cfg.epochs), desc="reward model", disable=not progress)
    threads = torch.get_num_threads()
    # the heads' ops are too small to gain from a second thread, and on a shared CPU every op's
    # thread barrier waits for a core
    torch.set_num_threads(1)
    try:
        best_state, best_epoch, curve = fit(model, feats, tr, va, optimizer, cfg, bar)
    finally:
        torch.set_num_threads(threads)
    bar.close()
    model.heads.load_state_dict(best_state)
    model.eval()

    # 4. the raw scores' scale on the training videos, and held-out accuracy
    with torch.no_grad():
        raw = model.head_scores(feats[train_items, 0])
        model.scale = {h: (float(r.mean()), float(r.std().clamp_min(1e-6))) for h, r in raw.items()}
        figures: dict = {"pairs": len(pairs), "train": len(train), "validation": len(val), "heldout": len(held)}
        if held:
            ia, ib, _, head = pair_tensors(held, index, heads)
            figures["accuracy_clean"] = accuracy(*pair_rewards(model, feats, ia, ib, head, 0), held)
            if cfg.copies > 1:
                noisy = [pair_rewards(model, feats, ia, ib, head, k) for k in range(1, cfg.copies)]
                figures["accuracy_noisy"] = accuracy(
                    torch.cat([a for a, _ in noisy]), torch.cat([b for _, b in noisy]), held * (cfg.copies - 1)
                )
            figures["metrics_accuracy"] = metrics_accuracy(held)
            figures["per_head"] = {
                h: accuracy(*pair_rewards(model, feats, *_subset(ia, ib, head, heads.index(h)), 0), _only(held, h))
                for h in heads
            }
    meta = {
        "pairs_file": str(Path(pairs_path).resolve()),
        "epochs": len(curve),
        "best_epoch": best_epoch,
        "validation_loss": curve,
        "config": asdict(cfg),
        "figures": figures,
    }
    model.save(out, meta)
    return Trained(model, {**meta, "heads": heads}, held)


def _subset(ia, ib, head, h: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    keep = head == h
    return ia[keep], ib[keep], head[keep]


def _only(pairs: list[Pair], dimension: str) -> list[Pair]:
    return [p for p in pairs if p.dimension == dimension]


def format_figures(meta: dict) -> str:
    """The held-out figures as the CLI prints them."""
    f = meta["figures"]
    lines = [
        f"pairs: {f['pairs']} (train {f['train']}, validation {f['validation']}, held-out {f['heldout']}); "
        f"heads: {', '.join(meta['heads'])}; best epoch {meta['best_epoch']} of {meta['epochs']}"
    ]

    def row(name: str, a: dict | None) -> str:
        if not a or a.get("accuracy") is None:
            return f"  {name:<28} no non-tie held-out pair"
        return f"  {name:<28} {a['accuracy']:.3f}  [{a['low']:.3f}, {a['high']:.3f}]  on {a['pairs']} pairs"

    if f["heldout"]:
        lines.append("held-out pairwise accuracy (non-tie pairs, Wilson 95% interval):")
        lines.append(row("learned, sigma = 0", f.get("accuracy_clean")))
        if "accuracy_noisy" in f:
            lines.append(row("learned, noisy copies", f["accuracy_noisy"]))
        m = f.get("metrics_accuracy", {})
        lines.append(row(f"metrics ({', '.join(m.get('dimensions', []))})", m))
        if len(meta["heads"]) > 1:
            for h, a in f["per_head"].items():
                lines.append(row(f"learned head {h}", a))
    else:
        lines.append("no held-out pairs (heldout = 0): no accuracy to report")
    return "\n".join(lines)
