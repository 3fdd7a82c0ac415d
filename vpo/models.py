"""``vpo models``: every backbone and reward model, where it looks for weights, and whether they are
there — a quick check of folders and configs, nothing loaded, no torch imported (the web form
asks the same question through ``vpo.backbones.real.weights_status``)."""

from __future__ import annotations

from pathlib import Path

from vpo.backbones import ALL_BACKBONES
from vpo.backbones.real import REAL_BACKBONES, weights_status
from vpo.rewards import REWARD_SOURCES
from vpo.rewards.local import SETTINGS as REWARD_SETTINGS
from vpo.rewards.local import weights_status as weights_status_of_reward

SHIPPED_WEIGHTS = Path(__file__).parent / "backbones" / "weights"  # <name>.safetensors: tiny, tiny-i2v


def report() -> list[dict]:
    """One row per model: kind, name, what it is, where, ok, status."""
    rows = []
    for name in ALL_BACKBONES:
        if name in REAL_BACKBONES:
            where, problem = weights_status(name)
            rows.append(
                {
                    "kind": "backbone",
                    "name": name,
                    "what": REAL_BACKBONES[name].models,
                    "where": str(where),
                    "ok": problem is None,
                    "status": problem or "present",
                }
            )
        else:
            shipped = SHIPPED_WEIGHTS / f"{name}.safetensors"
            ok = shipped.is_file()
            rows.append(
                {
                    "kind": "backbone",
                    "name": name,
                    "what": "built-in",
                    "where": str(shipped),
                    "ok": ok,
                    "status": "present (shipped)" if ok else "missing: the package lost its weights file",
                }
            )
    for name, source in REWARD_SOURCES.items():
        if name == "learned":  # no weights of its own: each trained model is a folder of its own
            rows.append(
                {
                    "kind": "reward",
                    "name": name,
                    "what": source.description,
                    "where": "reward_model = DIR",
                    "ok": True,
                    "status": "trained here from pairs: vpo reward-model train",
                }
            )
            continue
        place, problem = weights_status_of_reward(name)
        rows.append(
            {
                "kind": "reward",
                "name": name,
                "what": source.description,
                "where": place,
                "ok": problem is None,
                "status": problem or ("present" if name in REWARD_SETTINGS else "built-in, no weights"),
            }
        )
    return rows


def format_report(rows: list[dict]) -> str:
    lines = [f"{'kind':<9} {'name':<14} {'ok':<3} {'where':<40} status"]
    for r in rows:
        lines.append(f"{r['kind']:<9} {r['name']:<14} {'yes' if r['ok'] else 'no':<3} {r['where']:<40} {r['status']}")
    return "\n".join(lines)
