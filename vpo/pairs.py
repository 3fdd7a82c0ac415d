"""Preference pairs: the one JSONL format that study exports write and reward-model training reads.

One JSON object per line::

    {"prompt": "a red ball moving right", "a": "clips/0001.npy", "b": "clips/0002.mp4",
     "choice": "a" | "b" | "tie", "dimension": "temporal"}

``a`` and ``b`` are videos (``.npy`` uint8 frames or ``.mp4``); a relative path is resolved against
the folder of the JSONL file. ``dimension`` is optional: pairs without one belong to ``overall``.
Blank lines are skipped. Every bad line is reported with its number (``PairsError``), all of them
at once: nothing is silently dropped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

CHOICES = ("a", "b", "tie")
OVERALL = "overall"  # the dimension of a pair that names none
VIDEO_SUFFIXES = (".npy", ".mp4")
KEYS = {"prompt", "a", "b", "choice", "dimension"}


@dataclass(frozen=True)
class Pair:
    prompt: str
    a: Path
    b: Path
    choice: str  # "a", "b" or "tie"
    dimension: str = OVERALL
    line: int = 0  # where it came from (1-based), for messages

    def to_json(self, relative_to: Path | None = None) -> str:
        def name(p: Path) -> str:
            if relative_to is None:
                return str(p)
            try:
                return str(p.resolve().relative_to(relative_to.resolve()))
            except ValueError:  # not under the folder: keep it absolute
                return str(p.resolve())

        row = {"prompt": self.prompt, "a": name(self.a), "b": name(self.b), "choice": self.choice}
        if self.dimension != OVERALL:
            row["dimension"] = self.dimension
        return json.dumps(row, ensure_ascii=False)


class PairsError(ValueError):
    """Bad lines of a pairs file: ``problems`` is [(line number, what is wrong)], in file order."""

    def __init__(self, path: Path, problems: list[tuple[int, str]]):
        self.path, self.problems = path, problems
        shown = "; ".join(f"line {n}: {why}" for n, why in problems[:20])
        more = f"; and {len(problems) - 20} more" if len(problems) > 20 else ""
        super().__init__(f"{path}: {len(problems)} bad line(s): {shown}{more}")


def parse_line(text: str, folder: Path) -> Pair:
    """One line -> a Pair; a ValueError says what is wrong with it."""
    try:
        row = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"not JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(row, dict):
        raise ValueError(f"expected a JSON object, got {type(row).__name__}")
    unknown = sorted(set(row) - KEYS)
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(map(repr, unknown))}; valid: {', '.join(sorted(KEYS))}")
    missing = [k for k in ("prompt", "a", "b", "choice") if k not in row]
    if missing:
        raise ValueError(f"missing {', '.join(map(repr, missing))}")
    if not isinstance(row["prompt"], str) or not row["prompt"].strip():
        raise ValueError("prompt must be a non-empty string")
    if row["choice"] not in CHOICES:
        raise ValueError(f"choice must be one of {', '.join(map(repr, CHOICES))}, got {row['choice']!r}")
    dimension = row.get("dimension", OVERALL)
    if not isinstance(dimension, str) or not dimension.strip():
        raise ValueError("dimension must be a non-empty string when given")
    paths = []
    for key in ("a", "b"):
        value = row[key]
        if not isinstance(value, str) or not value:
            raise ValueError(f"{key} must be a path to a .npy or .mp4 video")
        path = Path(value)
        path = path if path.is_absolute() else folder / path
        if path.suffix not in VIDEO_SUFFIXES:
            raise ValueError(f"{key} = {value!r}: expected a .npy or .mp4 video")
        if not path.is_file():
            raise ValueError(f"{key} = {value!r}: no such file ({path})")
        paths.append(path)
    return Pair(row["prompt"], paths[0], paths[1], row["choice"], dimension.strip())


def read_pairs(path) -> list[Pair]:
    """Every pair of a JSONL file; a ``PairsError`` lists every bad line if there is one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no pairs file {path}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text: {e}") from None
    pairs, problems = [], []
    for number, text in enumerate(lines, 1):
        if not text.strip():
            continue
        try:
            pair = parse_line(text, path.parent)
        except ValueError as e:
            problems.append((number, str(e)))
            continue
        pairs.append(Pair(pair.prompt, pair.a, pair.b, pair.choice, pair.dimension, number))
    if problems:
        raise PairsError(path, problems)
    if not pairs:
        raise ValueError(f"{path} holds no pairs: expected one JSON object per line")
    return pairs


def write_pairs(pairs: list[Pair], path) -> Path:
    """Write ``pairs`` as JSONL; paths under the file's folder are written relative to it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(p.to_json(path.parent) + "\n" for p in pairs), encoding="utf-8")
    return path


def load_video(path: Path):
    """A pair's video as uint8 frames (F, H, W, 3)."""
    from vpo import video as video_io

    return video_io.load_frames(path) if path.suffix == ".npy" else video_io.read_mp4(path)


def dimensions(pairs: list[Pair]) -> list[str]:
    """The dimensions present, in the order they first appear."""
    return list(dict.fromkeys(p.dimension for p in pairs))
