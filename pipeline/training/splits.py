"""Validation splits (whole exposures, frames, fields, or sources); fields that join exposures."""

from __future__ import annotations

import numpy as np

from pipeline.errors import TrainingError

__all__ = ["SPLITS", "WHOLE", "split_validation", "group_fields", "label_subset"]

#: The ways :func:`split_validation` can hold out a validation set.
SPLITS = ("exposure", "frame", "field", "source")
#: The splits that hold out whole groups of sources.
WHOLE = ("exposure", "frame", "field")


def split_validation(groups: np.ndarray, labels: np.ndarray, *, by: str = "exposure",
                     val_fraction: float = 0.2,
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Choose a validation set, deterministically for a seed.

    ``by="exposure"`` (or ``"frame"``, ``"field"``: the same, for groups that are
    frames, or fields from :func:`group_fields`) holds out whole exposures
    (``groups``; neighbouring cutouts
    never leak across the split): exposures are visited in a seeded random order,
    first so that every class appears in validation where an exposure can supply
    it without leaving training without that class, then while the validation
    share gets closer to ``val_fraction``.  ``by="source"`` holds out
    ``val_fraction`` of each class at random.

    Parameters
    ----------
    groups, labels : numpy.ndarray
        Exposure name and class label of each source.
    by : {"exposure", "frame", "field", "source"}, default: "exposure"
    val_fraction : float, default: 0.2
    seed : int, default: 0

    Returns
    -------
    (numpy.ndarray, numpy.ndarray, list of str)
        Sorted train indices, sorted validation indices, validation exposures (sorted;
        empty for ``by="source"``).

    Raises
    ------
    pipeline.errors.TrainingError
        An unknown ``by``, ``val_fraction`` outside (0, 1), or groups that cannot be
        held out whole (a single group, or none without removing a class from training).
    """
    if by not in SPLITS:
        raise TrainingError(f"unknown split_by {by!r}; valid: {', '.join(SPLITS)}")
    if not 0.0 < val_fraction < 1.0:
        raise TrainingError(f"val_fraction must be between 0 and 1, got {val_fraction!r}")
    groups, labels = np.asarray(groups).astype(str), np.asarray(labels).astype(str)
    rng = np.random.default_rng(seed)
    classes, y = np.unique(labels, return_inverse=True)
    n = labels.size
    if by == "source":
        val = []
        for c in range(classes.size):
            members = rng.permutation(np.flatnonzero(y == c))
            k = int(round(val_fraction * members.size))
            k = min(max(k, 1 if members.size >= 2 else 0), members.size - 1)
            val.extend(members[:k].tolist())
        val_idx = np.sort(np.asarray(val, dtype=np.int64))
        return np.setdiff1d(np.arange(n), val_idx), val_idx, []
    names, g = np.unique(groups, return_inverse=True)
    if names.size < 2:
        raise TrainingError(f"cannot hold out whole {by}s: all sources come from {by} "
                            f"{names[0]!r}; use split_by='source'")
    counts = np.zeros((names.size, classes.size), dtype=np.int64)
    np.add.at(counts, (g, y), 1)
    total = counts.sum(axis=0)
    order = rng.permutation(names.size)
    chosen: list[int] = []
    val_counts = np.zeros(classes.size, dtype=np.int64)

    def keeps_train(e: int) -> bool:
        return bool(np.all(total - val_counts - counts[e] > 0))

    for c in np.argsort(total, kind="stable"):  # rarest class first
        if val_counts[c] > 0:
            continue
        for e in order:
            if e not in chosen and counts[e, c] > 0 and keeps_train(e):
                chosen.append(int(e))
                val_counts += counts[e]
                break
    target = val_fraction * n
    for e in order:
        if e in chosen:
            continue
        size = val_counts.sum()
        if abs(size + counts[e].sum() - target) < abs(size - target) and keeps_train(e):
            chosen.append(int(e))
            val_counts += counts[e]
    if not chosen:
        raise TrainingError(f"cannot hold out whole exposures from {names.size} exposures "
                            "without removing a class from training; use split_by='source'")
    val_mask = np.isin(g, chosen)
    return (np.flatnonzero(~val_mask), np.flatnonzero(val_mask),
            sorted(str(names[e]) for e in chosen))


def group_fields(exposures: np.ndarray, x: np.ndarray, y: np.ndarray,
                 ra: np.ndarray | None = None, dec: np.ndarray | None = None, *,
                 min_fraction: float = 0.3, radius_arcsec: float = 1.0, bin_px: float = 4.0,
                 tol_px: float = 3.0, min_matches: int = 10,
                 max_sources: int = 2000) -> dict[str, str]:
    """Join the exposures that image the same field (union of overlapping pairs).

    Two exposures image the same field when more than ``min_fraction`` of the
    sources of the smaller one have a counterpart in the other (and at least
    ``min_matches`` do; 3 on the sky, where chance matches within 1" are rare):

    * on the sky, when both have finite ``ra``/``dec`` (deg) for most sources:
      a counterpart lies within ``radius_arcsec``;
    * else by a constant pixel offset (frames of one field cut from different
      pointings, no WCS): the most common difference of ``x``,``y`` over all
      pairs of their sources, in ``bin_px`` bins, refined to the median in that
      bin; a counterpart lies within ``tol_px`` once shifted.  Exposures with
      more than ``max_sources`` sources use an evenly spaced subset of them.

    Parameters
    ----------
    exposures : numpy.ndarray
        Exposure (frame) name of each source.
    x, y : numpy.ndarray
        0-based pixel position of each source on its exposure (x = column, y = row).
    ra, dec : numpy.ndarray, optional
        Sky position of each source, deg (NaN where unknown).

    Returns
    -------
    dict
        Exposure name -> field name: the ``+``-joined sorted names of the
        exposures of its field (the exposure's own name when it stands alone).
    """
    from scipy.spatial import cKDTree

    exposures = np.asarray(exposures).astype(str)
    n = exposures.size
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    ra = np.full(n, np.nan) if ra is None else np.asarray(ra, np.float64)
    dec = np.full(n, np.nan) if dec is None else np.asarray(dec, np.float64)
    if not (x.shape == y.shape == ra.shape == dec.shape == (n,)):
        raise ValueError(f"group_fields: exposures, x, y, ra, dec must have one value per "
                         f"source ({n}); got shapes {x.shape}, {y.shape}, {ra.shape}, "
                         f"{dec.shape}")
    names, e = np.unique(exposures, return_inverse=True)
    m = names.size
    size = np.bincount(e, minlength=m)
    sky_ok = np.isfinite(ra) & np.isfinite(dec)
    pix_ok = np.isfinite(x) & np.isfinite(y)
    on_sky = np.bincount(e, weights=sky_ok, minlength=m) > 0.5 * size
    matched = np.zeros((m, m), dtype=np.int64)  # [a, b]: sources of a with a counterpart in b

    use = sky_ok & on_sky[e]
    if np.count_nonzero(on_sky) >= 2:
        r, d = np.radians(ra[use]), np.radians(dec[use])
        xyz = np.stack([np.cos(d) * np.cos(r), np.cos(d) * np.sin(r), np.sin(d)], axis=1)
        chord = 2.0 * np.sin(np.radians(radius_arcsec / 3600.0) / 2.0)
        pairs = cKDTree(xyz).query_pairs(chord, output_type="ndarray")
        src, ex = np.flatnonzero(use), e[use]
        if pairs.size:
            i, j = pairs[:, 0], pairs[:, 1]
            cross = ex[i] != ex[j]
            i, j = i[cross], j[cross]
            both = np.concatenate([np.stack([src[i], ex[j]], 1), np.stack([src[j], ex[i]], 1)])
            both = np.unique(both, axis=0)  # one count per (source, other exposure)
            np.add.at(matched, (e[both[:, 0]], both[:, 1]), 1)

    pos = {}
    for k in range(m):
        sel = np.flatnonzero((e == k) & pix_ok)
        if sel.size > max_sources:
            sel = sel[np.linspace(0, sel.size - 1, max_sources).astype(np.int64)]
        pos[k] = np.stack([x[sel], y[sel]], axis=1)
    for a in range(m):
        for b in range(a + 1, m):
            if (on_sky[a] and on_sky[b]) or len(pos[a]) == 0 or len(pos[b]) == 0:
                continue
            matched[a, b] = matched[b, a] = _offset_matches(pos[a], pos[b], bin_px=bin_px,
                                                            tol_px=tol_px)

    parent = list(range(m))

    def find(k: int) -> int:
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    for a in range(m):
        for b in range(a + 1, m):
            k = max(matched[a, b], matched[b, a])
            need = 3 if on_sky[a] and on_sky[b] else min_matches
            if k >= need and k > min_fraction * min(size[a], size[b]):
                parent[find(b)] = find(a)
    members: dict[int, list[str]] = {}
    for k in range(m):
        members.setdefault(find(k), []).append(str(names[k]))
    return {str(names[k]): "+".join(sorted(members[find(k)])) for k in range(m)}


def _offset_matches(a: np.ndarray, b: np.ndarray, *, bin_px: float, tol_px: float) -> int:
    """Sources of ``a`` (``(n, 2)`` x, y) with a counterpart in ``b`` under the best constant shift."""
    from scipy.spatial import cKDTree

    d = (a[:, None, :] - b[None, :, :]).reshape(-1, 2)
    k = np.round(d / bin_px).astype(np.int64)
    key = (k[:, 0] - k[:, 0].min()) * (k[:, 1].max() - k[:, 1].min() + 1) + (
        k[:, 1] - k[:, 1].min())
    values, counts = np.unique(key, return_counts=True)
    best = values[counts.argmax()]
    offset = np.median(d[key == best], axis=0)
    near = np.all(np.abs(d - offset) <= bin_px, axis=1)  # refine with the neighbouring bins
    offset = np.median(d[near], axis=0)
    dist, _ = cKDTree(b).query(a - offset, distance_upper_bound=tol_px)
    return int(np.count_nonzero(np.isfinite(dist)))


def label_subset(train_idx: np.ndarray, labels: np.ndarray, fraction: float, *,
                 seed: int = 0) -> np.ndarray:
    """Keep a seeded, class-stratified ``fraction`` of the training sources (a learning curve).

    Each class keeps ``round(fraction * n_class)`` of its training sources, at least one.
    A smaller fraction's subset is contained in a larger one's for the same seed, so the
    points of a learning curve add labels rather than draw new ones.

    Parameters
    ----------
    train_idx : numpy.ndarray
        Indices of the training sources (into ``labels``).
    labels : numpy.ndarray
        Class label of every source.
    fraction : float
        Share of each class to keep, in (0, 1]; 1 returns ``train_idx`` unchanged.
    seed : int, default: 0

    Returns
    -------
    numpy.ndarray
        Sorted indices, a subset of ``train_idx``.

    Raises
    ------
    pipeline.errors.TrainingError
        ``fraction`` outside (0, 1].
    """
    if not 0.0 < fraction <= 1.0:
        raise TrainingError(f"train_fraction must be in (0, 1], got {fraction!r}")
    train_idx = np.asarray(train_idx)
    if fraction == 1.0:
        return train_idx
    rng = np.random.default_rng(seed)
    own = np.asarray(labels).astype(str)[train_idx]
    keep = []
    for c in np.unique(own):
        members = train_idx[own == c]
        order = members[rng.permutation(members.size)]
        keep.append(order[:max(1, round(fraction * members.size))])
    return np.sort(np.concatenate(keep))
