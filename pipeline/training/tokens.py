"""The architecture tokens of ``skysieve compare``: ``NAME`` or ``NAME+kd``, resolved against the zoo."""

from __future__ import annotations

from typing import Any

from pipeline.errors import CompareError
from workers.models import is_model, list_models

__all__ = ["KD_SUFFIX", "parse_token", "resolve_arch"]

KD_SUFFIX = "+kd"

#: Registered names that mean a different variant at cutout sizes (token -> variant).
_CUTOUT_VARIANTS = {"hr_celestialnet": "hr_celestialnet_cutout"}


def resolve_arch(name: str, *, image_size: int) -> str:
    """Return the registered architecture a (non-kd) token name stands for.

    ``hr_celestialnet`` is the full-exposure network of the paper, which needs
    inputs far larger than a cutout; at inputs smaller than its minimum side it
    means the documented cutout variant ``hr_celestialnet_cutout``.

    Parameters
    ----------
    name : str
        A registered model name.
    image_size : int
        Model input side in pixels.

    Raises
    ------
    pipeline.errors.CompareError
        ``name`` is not registered (the message lists the registry).
    """
    if not isinstance(name, str) or not is_model(name):
        raise CompareError(f"compare: unknown architecture {name!r}; registered models: "
                           f"{', '.join(list_models())} (append {KD_SUFFIX!r} to distil one from "
                           "the teacher, e.g. 'mobilenetv3_small+kd')")
    if name in _CUTOUT_VARIANTS:
        from workers.models.hr_celestialnet import min_input_side

        if image_size < min_input_side():
            return _CUTOUT_VARIANTS[name]
    return name


def parse_token(token: str, *, image_size: int) -> dict[str, Any]:
    """Parse an architecture token: ``NAME`` or ``NAME+kd``.

    Parameters
    ----------
    token : str
        A registered model name, optionally followed by ``+kd`` (distilled from the teacher).
    image_size : int
        Model input side in pixels (see :func:`resolve_arch`).

    Returns
    -------
    dict
        ``token``, ``name`` (without ``+kd``), ``arch`` (the registered model trained),
        ``kd`` (bool).

    Raises
    ------
    pipeline.errors.CompareError
        Not a string, empty, or an unknown name (the registry is listed).

    Examples
    --------
    >>> parse_token("mobilenetv3_small+kd", image_size=64)["arch"]
    'mobilenetv3_small'
    >>> parse_token("hr_celestialnet", image_size=64)["arch"]
    'hr_celestialnet_cutout'
    """
    if not isinstance(token, str) or not token.strip():
        raise CompareError(f"compare: an architecture token must be a model name, got {token!r}")
    token = token.strip()
    kd = token.endswith(KD_SUFFIX)
    name = token[: -len(KD_SUFFIX)] if kd else token
    return {"token": token, "name": name, "arch": resolve_arch(name, image_size=image_size),
            "kd": kd}
