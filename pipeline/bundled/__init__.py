"""Models bundled with skysieve, and the resolution of ``--model NAME|PATH``.

Each bundled model is ``<name>.pt`` (weights) + ``<name>.json`` (its card) in
this folder; docs/models.md gives the exact ``skysieve train`` command that made it.
"""

from __future__ import annotations

from difflib import get_close_matches
from pathlib import Path

__all__ = ["names", "resolve"]

_HERE = Path(__file__).parent


def names() -> list[str]:
    """Names of the models shipped inside the package."""
    return sorted(p.stem for p in _HERE.glob("*.json") if p.with_suffix(".pt").is_file())


def resolve(model: str | Path) -> Path:
    """Return the checkpoint path for a bundled name (``"default"``) or a path.

    Raises
    ------
    FileNotFoundError
        Neither a bundled name nor an existing ``.pt`` file with its ``.json`` card.
    """
    text = str(model)
    if text in names():
        return _HERE / f"{text}.pt"
    path = Path(text).expanduser()
    if path.suffix == ".json":
        path = path.with_suffix(".pt")
    if path.is_file():
        if not path.with_suffix(".json").is_file():
            raise FileNotFoundError(f"{path}: checkpoint has no card {path.with_suffix('.json').name!r} "
                                    "beside it; checkpoints written by `skysieve train` have one")
        return path
    close = get_close_matches(text, names())
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise FileNotFoundError(f"model {text!r} is neither a bundled model {names()!r} nor an "
                            f"existing checkpoint file{hint}")
