"""Built-in prompt sets (one prompt per line, ``#`` comments) and prompt-file reading."""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).parent
BUILTIN = {p.stem: p for p in sorted(HERE.glob("*.txt"))}


def parse_prompts(text: str) -> list[str]:
    lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
    return [line for line in lines if line]


def read_prompts(path) -> list[str]:
    """Prompts from a file, or from a built-in set by name (``demo``, ``heldout64``)."""
    if str(path) in BUILTIN:
        path = BUILTIN[str(path)]
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no prompt file {path} (built-in sets: {', '.join(BUILTIN)})")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text: {e}") from None
    prompts = parse_prompts(text)
    if not prompts:
        raise ValueError(f"no prompts in {path}: expected one prompt per line")
    return prompts


def check_prompts(prompts: list[str]) -> list[str]:
    prompts = [p.strip() for p in prompts]
    if not prompts or not all(prompts):
        raise ValueError("need at least one non-empty prompt")
    return prompts
