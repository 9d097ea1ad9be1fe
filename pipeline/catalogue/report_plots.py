"""The report's plots: PNG figures (matplotlib, Agg) drawn from DuckDB over the catalogue.

Each ``plot_*`` function takes a DuckDB connection with the view ``catalogue``
(:func:`pipeline.catalogue.api.connect`) or a bounded sample of rows
(:func:`sample_rows`), writes one PNG into the report folder atomically and
returns its file name.  :mod:`pipeline.catalogue.report` lays them out on the page.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.files import atomic_write

__all__ = ["REPORT_PLOTS", "SAMPLE_ROWS", "ident", "colours_for", "sample_rows", "exposure_stats",
           "plot_counts", "plot_probabilities", "plot_blur", "plot_sky", "plot_psf",
           "plot_confusion", "plot_gallery"]

#: The PNG files a report always holds (the gallery and confusion matrix are extra).
REPORT_PLOTS = ("class_counts.png", "probabilities.png", "blur_confidence.png", "sky.png",
                "psf_fwhm.png")
#: Rows sampled (reservoir, repeatable) for the scatter plots.
SAMPLE_ROWS = 50_000
_DPI = 100


def ident(name: str) -> str:
    """A quoted SQL identifier (class names come from the model card)."""
    return '"' + name.replace('"', '""') + '"'


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11,
                         "figure.dpi": _DPI})
    return plt


def colours_for(classes: list[str]) -> dict[str, Any]:
    """One matplotlib colour per class (tab10, or tab20 beyond ten classes)."""
    plt = _plt()
    cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    return {c: cmap(i % cmap.N) for i, c in enumerate(classes)}


def _save(fig, out: Path, name: str) -> str:
    """Write ``fig`` as ``out/name`` (PNG) atomically, close it, return ``name``."""
    plt = _plt()
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=_DPI, bbox_inches="tight")
    finally:
        plt.close(fig)
    atomic_write(out / name, buf.getvalue())
    return name


# --------------------------------------------------------------------------- plots

def plot_counts(con, classes: list[str], has_truth: bool, out: Path, colours) -> str:
    """Bars of sources per predicted class (and per true class, hatched, with truth)."""
    plt = _plt()
    pred = dict(con.execute("SELECT label, count(*) FROM catalogue GROUP BY 1").fetchall())
    truth = dict(con.execute("SELECT true_label, count(*) FROM catalogue WHERE true_label <> '' "
                             "GROUP BY 1").fetchall()) if has_truth else {}
    names = list(classes) + sorted(set(pred) - set(classes))
    y = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(8, 0.55 * len(names) + 1.5))
    h = 0.4 if truth else 0.7
    bars = ax.barh(y, [pred.get(n, 0) for n in names], height=h,
                   color=[colours.get(n, "grey") for n in names], label="predicted (label)")
    ax.bar_label(bars, padding=3, fontsize=9)
    if truth:
        tb = ax.barh(y + h, [truth.get(n, 0) for n in names], height=h, color="none",
                     edgecolor="black", hatch="//", label="true (true_label)")
        ax.bar_label(tb, padding=3, fontsize=9)
        ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, frameon=False)
    ax.set_yticks(y + (h / 2 if truth else 0), names)
    ax.invert_yaxis()
    ax.set_xlabel("sources")
    ax.set_title("Sources per class", pad=28 if truth else 6)
    ax.margins(x=0.15)
    return _save(fig, out, "class_counts.png")


def plot_probabilities(con, classes: list[str], out: Path, colours) -> str:
    """One histogram per class probability: all sources, and those labelled with it."""
    plt = _plt()
    bins = 40
    ncols = min(3, len(classes))
    nrows = int(np.ceil(len(classes) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.2 * nrows), squeeze=False)
    edges = np.linspace(0, 1, bins + 1)
    for ax, name in zip(axes.flat, classes):
        col = ident(f"p_{name}")
        rows = con.execute(
            f"SELECT least(floor({col} * {bins}), {bins - 1})::INT AS b, count(*), "
            f"count(*) FILTER (WHERE label = ?) FROM catalogue WHERE {col} IS NOT NULL "
            "GROUP BY 1", [name]).fetchall()
        allc, ownc = np.zeros(bins), np.zeros(bins)
        for b, n, own in rows:
            allc[int(b)], ownc[int(b)] = n, own
        ax.stairs(allc, edges, fill=True, color="lightgrey", label="all sources")
        ax.stairs(ownc, edges, color=colours[name], linewidth=2, label=f"labelled {name}")
        ax.set_yscale("log")
        ax.set_ylim(bottom=0.8)
        ax.set_xlim(0, 1)
        ax.set_xlabel(f"p_{name} (probability)")
        ax.set_ylabel("sources (log)")
        ax.set_title(name)
        ax.legend(fontsize=8, loc="upper center")
    for ax in list(axes.flat)[len(classes):]:
        ax.set_visible(False)
    fig.suptitle("Class probability distributions", y=1.0)
    fig.tight_layout()
    return _save(fig, out, "probabilities.png")


def sample_rows(con, columns: list[str]) -> Any:
    """A repeatable reservoir sample of at most :data:`SAMPLE_ROWS` rows (a DataFrame)."""
    cols = ", ".join(ident(c) for c in columns)
    return con.execute(f"SELECT {cols} FROM catalogue USING SAMPLE reservoir({SAMPLE_ROWS} ROWS) "
                       "REPEATABLE (7)").df()


def plot_blur(df, out: Path) -> str:
    """Confidence against blur score (hexbin of the sample ``df``, median per decile)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 5))
    d = df[np.isfinite(df["blur_score"].to_numpy(float))]
    x, y = d["blur_score"].to_numpy(float), d["confidence"].to_numpy(float)
    if len(d):
        hi = float(np.nanpercentile(x, 99.5))
        lo = float(np.nanmin(x))
        keep = x <= hi
        hb = ax.hexbin(x[keep], y[keep], gridsize=40, bins="log", cmap="viridis", mincnt=1,
                       extent=(lo, hi, 0, 1))
        from matplotlib.ticker import LogLocator, ScalarFormatter

        cb = fig.colorbar(hb, ax=ax, label="sources per cell (log scale)")
        cb.ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        cb.ax.yaxis.set_major_formatter(ScalarFormatter())
        cb.ax.yaxis.set_minor_formatter(ScalarFormatter(useOffset=False))
        cb.ax.yaxis.set_minor_locator(LogLocator(base=10, subs=()))
        edges = np.quantile(x[keep], np.linspace(0, 1, 11))
        mids, med = [], []
        for a, b in zip(edges[:-1], edges[1:]):
            m = keep & (x >= a) & (x <= b)
            if m.sum() >= 5:
                mids.append(np.median(x[m]))
                med.append(np.median(y[m]))
        ax.plot(mids, med, "o-", color="tab:red", label="median confidence (decile bins)")
        ax.axvline(1.0, color="black", lw=1, ls="--", label="blur score 1 = reference PSF")
        ax.legend(loc="lower left", fontsize=9)
    ax.set_xlabel("blur score (apparent FWHM / reference PSF FWHM)")
    ax.set_ylabel("confidence (highest class probability)")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"Confidence against blur ({len(d):,} sources"
                 f"{', sampled' if len(d) >= SAMPLE_ROWS else ''})")
    return _save(fig, out, "blur_confidence.png")


def plot_sky(df, classes: list[str], out: Path, colours) -> str:
    """Sky positions of the sample ``df`` coloured by predicted class."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 7))
    d = df[np.isfinite(df["ra"].to_numpy(float)) & np.isfinite(df["dec"].to_numpy(float))]
    ra = d["ra"].to_numpy(float)
    if len(ra) and np.ptp(ra) > 180:  # the patch straddles RA 0: keep it contiguous
        ra = np.where(ra > 180, ra - 360, ra)
    size = float(np.clip(3e4 / max(len(d), 1), 1, 12))
    for name in classes + sorted(set(d["label"]) - set(classes)):
        m = (d["label"] == name).to_numpy()
        if m.any():
            ax.scatter(ra[m], d["dec"].to_numpy(float)[m], s=size, color=colours.get(name, "grey"),
                       label=f"{name} ({m.sum():,})", alpha=0.8, linewidths=0)
    if len(d):
        dec0 = np.radians(np.median(d["dec"].to_numpy(float)))
        ax.set_aspect(1 / max(np.cos(dec0), 0.05), adjustable="datalim")
        ax.invert_xaxis()  # RA grows to the east (left), as on the sky
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), markerscale=max(1, 6 / size ** 0.5),
                  title="label")
    ax.set_xlabel("RA (deg, ICRS)")
    ax.set_ylabel("Dec (deg, ICRS)")
    ax.set_title(f"Sky positions by class ({len(d):,} sources"
                 f"{', sampled' if len(df) >= SAMPLE_ROWS else ''})")
    return _save(fig, out, "sky.png")


def exposure_stats(con) -> Any:
    """Per exposure: sources, PSF FWHM quartiles, median blur score, mean confidence."""
    return con.execute(
        "SELECT exposure, count(*) AS sources, "
        "quantile_cont(psf_fwhm, 0.5) AS psf_fwhm_median, "
        "quantile_cont(psf_fwhm, 0.25) AS psf_fwhm_q25, "
        "quantile_cont(psf_fwhm, 0.75) AS psf_fwhm_q75, "
        "quantile_cont(blur_score, 0.5) AS blur_score_median, "
        "avg(confidence) AS confidence_mean "
        "FROM catalogue GROUP BY exposure ORDER BY exposure").df()


def plot_psf(stats, out: Path) -> str:
    """PSF FWHM per exposure from :func:`exposure_stats`: median bars, quartile whiskers."""
    plt = _plt()
    n = len(stats)
    fig, ax = plt.subplots(figsize=(max(8, min(0.5 * n, 16)), 4.5))
    x = np.arange(n)
    med = stats["psf_fwhm_median"].to_numpy(float)
    err = np.vstack([med - stats["psf_fwhm_q25"].to_numpy(float),
                     stats["psf_fwhm_q75"].to_numpy(float) - med])
    ax.bar(x, med, color="tab:blue", alpha=0.75, label="median")
    ax.errorbar(x, med, yerr=np.nan_to_num(err), fmt="none", ecolor="black", capsize=3,
                label="25th-75th percentile")
    if n <= 40:
        ax.set_xticks(x, stats["exposure"].astype(str), rotation=45 if n > 6 else 0,
                      ha="right" if n > 6 else "center")
    ax.set_ylabel("PSF FWHM (px)")
    ax.set_xlabel("exposure" if n <= 40 else "exposure (index, sorted by name)")
    ax.set_title("PSF FWHM per exposure (from ingest)", pad=26)
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, frameon=False, fontsize=9)
    return _save(fig, out, "psf_fwhm.png")


def plot_confusion(con, classes: list[str], out: Path) -> tuple[str, float]:
    """The confusion matrix against ``true_label``; returns the file name and the accuracy."""
    plt = _plt()
    rows = con.execute("SELECT true_label, label, count(*) FROM catalogue WHERE true_label <> '' "
                       "GROUP BY 1, 2").fetchall()
    truths = [c for c in classes if any(r[0] == c for r in rows)]
    truths += sorted({r[0] for r in rows} - set(truths))
    preds = list(classes) + sorted({r[1] for r in rows} - set(classes))
    m = np.zeros((len(truths), len(preds)))
    for t, p, n in rows:
        m[truths.index(t), preds.index(p)] = n
    total = m.sum()
    acc = float(sum(m[i, preds.index(t)] for i, t in enumerate(truths) if t in preds) / total) \
        if total else float("nan")
    frac = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.1 * len(preds) + 3, 0.9 * len(truths) + 2))
    im = ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(truths)):
        for j in range(len(preds)):
            ax.text(j, i, f"{frac[i, j]:.2f}\n({int(m[i, j])})", ha="center", va="center",
                    fontsize=8, color="white" if frac[i, j] > 0.6 else "black")
    ax.set_xticks(range(len(preds)), preds, rotation=30, ha="right")
    ax.set_yticks(range(len(truths)), truths)
    ax.set_xlabel("predicted label")
    ax.set_ylabel("true label")
    ax.set_title(f"Confusion matrix (row fraction; accuracy {acc:.3f} over {int(total):,})")
    fig.colorbar(im, ax=ax, label="fraction of the true class")
    return _save(fig, out, "confusion.png"), acc


def _stretch(stamp: np.ndarray) -> np.ndarray:
    """An asinh display stretch of one stamp (NaN pixels -> 0)."""
    v = np.asarray(stamp, dtype=np.float64)
    finite = v[np.isfinite(v)]
    if finite.size == 0:
        return np.zeros_like(v)
    med = np.median(finite)
    noise = 1.4826 * np.median(np.abs(finite - med)) or (np.std(finite) or 1.0)
    z = np.arcsinh((np.nan_to_num(v, nan=med) - med) / (3 * noise))
    lo, hi = np.percentile(z, [1, 99.7])
    return np.clip((z - lo) / (hi - lo if hi > lo else 1.0), 0, 1)


def plot_gallery(con, classes: list[str], store: Path, per_class: int, out: Path,
                  colours) -> tuple[str, int]:
    """Cutouts from ``store`` per class and the least confident; returns the name and count shown."""
    from pipeline.store import open_store

    plt = _plt()
    ds = open_store(store)
    index_of = {int(s): i for i, s in enumerate(np.asarray(ds["source_id"].values))}
    pcols = ", ".join(ident(f"p_{c}") for c in classes)
    rows: list[tuple[str, Any]] = []
    for name in classes:
        df = con.execute(f"SELECT source_id, label, confidence, {pcols} FROM catalogue "
                         "WHERE label = ? ORDER BY hash(source_id) LIMIT ?",
                         [name, per_class]).df()
        rows.append((f"labelled {name}", df.sort_values("confidence", ascending=False)))
    unsure = con.execute(f"SELECT source_id, label, confidence, {pcols} FROM catalogue "
                         "ORDER BY confidence ASC, source_id LIMIT ?", [per_class]).df()
    rows.append(("least confident", unsure))
    wanted = sorted({index_of[int(s)] for _, df in rows for s in df["source_id"]
                     if int(s) in index_of})
    stamps = {}
    if wanted:
        images = np.asarray(ds["image"].isel(source=wanted, band=0).values)
        stamps = {w: images[k] for k, w in enumerate(wanted)}
    fig, axes = plt.subplots(len(rows), per_class, figsize=(1.55 * per_class + 1.2, 1.95 * len(rows)),
                             squeeze=False)
    shown = 0
    for r, (title, df) in enumerate(rows):
        for c in range(per_class):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(title, fontsize=10, rotation=90)
            if c >= len(df):
                ax.set_frame_on(False)
                continue
            row = df.iloc[c]
            k = index_of.get(int(row["source_id"]))
            if k is None:
                ax.text(0.5, 0.5, "not in\nstore", ha="center", va="center", fontsize=8)
            else:
                ax.imshow(_stretch(stamps[k]), cmap="gray", origin="lower", interpolation="nearest")
                shown += 1
            probs = {cl: float(row[f"p_{cl}"]) for cl in classes}
            second = sorted(probs, key=probs.get, reverse=True)[1] if len(probs) > 1 else None
            text = f"{row['label']} {probs[row['label']]:.2f}" if row["label"] in probs else \
                str(row["label"])
            if second is not None:
                text += f"\n{second} {probs[second]:.2f}"
            ax.set_title(text, fontsize=8, color=colours.get(row["label"], "black"))
            for spine in ax.spines.values():
                spine.set_edgecolor(colours.get(row["label"], "black"))
                spine.set_linewidth(2)
    fig.suptitle("Cutouts per class (band 0, asinh stretch, CCD row 0 at the bottom; "
                 "titles: the two most probable classes)", y=1.0, fontsize=11)
    fig.tight_layout()
    return _save(fig, out, "gallery.png"), shown
