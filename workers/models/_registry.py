"""The model registry: ``@register_model`` files a constructor under its name; ``create_model`` builds it.

Kept apart from ``workers/models/__init__.py`` so that the architecture files can
register themselves without importing the package that imports them.
"""

from __future__ import annotations

import fnmatch
from difflib import get_close_matches
from typing import Any, Callable

from torch import nn

__all__ = ["register_model", "create_model", "list_models", "is_model"]

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a model constructor under its function name.

    Parameters
    ----------
    fn : callable
        ``fn(*, num_classes, in_chans, image_size, **kw) -> nn.Module``.

    Returns
    -------
    callable
        ``fn`` unchanged, so this works as a decorator.
    """
    name = fn.__name__
    if name in _MODELS and _MODELS[name] is not fn:
        raise ValueError(f"model {name!r} is registered twice ({_MODELS[name].__module__} "
                         f"and {fn.__module__}); rename one of the variants")
    _MODELS[name] = fn
    return fn


def is_model(name: str) -> bool:
    """Return whether ``name`` is a registered model."""
    return name in _MODELS


def list_models(pattern: str = "*") -> list[str]:
    """Return the sorted names of the registered models matching a glob ``pattern``.

    Examples
    --------
    >>> "smallcnn" in list_models("small*")
    True
    """
    return sorted(n for n in _MODELS if fnmatch.fnmatchcase(n, pattern))


def create_model(name: str, *, num_classes: int, in_chans: int = 1, image_size: int = 64,
                 **kw: Any) -> nn.Module:
    """Build a registered model with freshly initialised weights.

    Parameters
    ----------
    name : str
        Registered name, see :func:`list_models`.
    num_classes : int
        Number of output logits.
    in_chans : int, default: 1
        Input channels (bands).
    image_size : int, default: 64
        Side of the square input stamps in pixels.
    **kw
        Passed to the model; ``None`` values are dropped so the model's defaults hold.

    Returns
    -------
    torch.nn.Module
        The model in training mode, on the CPU.

    Raises
    ------
    ValueError
        Unknown ``name`` (the message lists close matches and every name), or a
        bad ``num_classes`` / ``in_chans`` / ``image_size``.
    """
    if name not in _MODELS:
        close = get_close_matches(name, list(_MODELS), n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(map(repr, close))}? " if close else ""
        raise ValueError(f"unknown model {name!r}; {hint}registered models: "
                         f"{', '.join(list_models())}")
    for key, value, low in (("num_classes", num_classes, 1), ("in_chans", in_chans, 1),
                            ("image_size", image_size, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"create_model({name!r}): {key} must be an integer >= {low}, "
                             f"got {value!r}")
    kwargs = {k: v for k, v in kw.items() if v is not None}
    return _MODELS[name](num_classes=num_classes, in_chans=in_chans, image_size=image_size,
                         **kwargs)
