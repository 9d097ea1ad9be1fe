"""``skysieve report``: a static HTML page on a catalogue, for the morning after the night.

``write_report(catalogue, out)`` writes ``out/index.html`` and its PNG plots
(matplotlib, Agg): class counts, probability histograms, blur score against
confidence, a sky map coloured by class, the PSF FWHM of each exposure, the
confusion matrix when the catalogue carries ``true_label``, and a gallery of
cutouts per class read from the cutout store; then the run's provenance (the
Parquet ``skysieve`` metadata), its summary (``_summary.json``) and the inputs
rejected at ingest (``_rejects.parquet``).

Every number comes from DuckDB over the part files (aggregates, plus a bounded
sample of rows for the scatter plots), so the report's memory does not grow
with the catalogue.
"""

from __future__ import annotations

import html
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from pipeline import catalogue

__all__ = ["write_report", "REPORT_PLOTS"]

#: The PNG files a report always holds (the gallery and confusion matrix are extra).
REPORT_PLOTS = ("class_counts.png", "probabilities.png", "blur_confidence.png", "sky.png",
                "psf_fwhm.png")
_SAMPLE_ROWS = 50_000
_DPI = 100


@contextmanager
def _duckdb(path: Path) -> Iterator[Any]:
    """A DuckDB connection with the view ``catalogue`` over the part files."""
    import duckdb

    con = duckdb.connect()
    try:
        glob = str(path / catalogue.PART_GLOB).replace("'", "''")
        con.execute(f"CREATE VIEW catalogue AS SELECT * FROM read_parquet('{glob}')")
        yield con
    finally:
        con.close()


def _ident(name: str) -> str:
    """A quoted SQL identifier (class names come from the model card)."""
    return '"' + name.replace('"', '""') + '"'


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11,
                         "figure.dpi": _DPI})
    return plt


def _colours(classes: list[str]) -> dict[str, Any]:
    plt = _plt()
    cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    return {c: cmap(i % cmap.N) for i, c in enumerate(classes)}


def _save(fig, out: Path, name: str) -> str:
    plt = _plt()
    fig.savefig(out / name, dpi=_DPI, bbox_inches="tight")
    plt.close(fig)
    return name


# --------------------------------------------------------------------------- plots

def _plot_counts(con, classes: list[str], has_truth: bool, out: Path, colours) -> str:
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


def _plot_probabilities(con, classes: list[str], out: Path, colours) -> str:
    plt = _plt()
    bins = 40
    ncols = min(3, len(classes))
    nrows = int(np.ceil(len(classes) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.2 * nrows), squeeze=False)
    edges = np.linspace(0, 1, bins + 1)
    for ax, name in zip(axes.flat, classes):
        col = _ident(f"p_{name}")
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


def _sample(con, columns: list[str]) -> Any:
    cols = ", ".join(_ident(c) for c in columns)
    return con.execute(f"SELECT {cols} FROM catalogue USING SAMPLE reservoir({_SAMPLE_ROWS} ROWS) "
                       "REPEATABLE (7)").df()


def _plot_blur(df, out: Path) -> str:
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
                 f"{', sampled' if len(d) >= _SAMPLE_ROWS else ''})")
    return _save(fig, out, "blur_confidence.png")


def _plot_sky(df, classes: list[str], out: Path, colours) -> str:
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
                 f"{', sampled' if len(df) >= _SAMPLE_ROWS else ''})")
    return _save(fig, out, "sky.png")


def _exposure_stats(con) -> Any:
    return con.execute(
        "SELECT exposure, count(*) AS sources, "
        "quantile_cont(psf_fwhm, 0.5) AS psf_fwhm_median, "
        "quantile_cont(psf_fwhm, 0.25) AS psf_fwhm_q25, "
        "quantile_cont(psf_fwhm, 0.75) AS psf_fwhm_q75, "
        "quantile_cont(blur_score, 0.5) AS blur_score_median, "
        "avg(confidence) AS confidence_mean "
        "FROM catalogue GROUP BY exposure ORDER BY exposure").df()


def _plot_psf(stats, out: Path) -> str:
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


def _plot_confusion(con, classes: list[str], out: Path) -> tuple[str, float]:
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


def _plot_gallery(con, classes: list[str], store: Path, per_class: int, out: Path,
                  colours) -> tuple[str, int]:
    from pipeline.store import open_store

    plt = _plt()
    ds = open_store(store)
    index_of = {int(s): i for i, s in enumerate(np.asarray(ds["source_id"].values))}
    pcols = ", ".join(_ident(f"p_{c}") for c in classes)
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


# --------------------------------------------------------------------------- page

def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _table(rows: list[tuple[str, Any]]) -> str:
    cells = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_fmt(v))}</td></tr>"
                    for k, v in rows)
    return f"<table class='kv'>{cells}</table>"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.4g}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    if isinstance(v, (dict, list)):
        return json.dumps(v, sort_keys=True)
    return str(v)


def _frame_table(df, *, limit: int = 100) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>"
                   for row in df.head(limit).itertuples(index=False))
    more = f"<p class='note'>{len(df) - limit:,} more rows not shown.</p>" if len(df) > limit else ""
    return f"<table class='grid'><tr>{head}</tr>{body}</table>{more}"


def _figure(name: str, caption: str) -> str:
    return (f"<figure><img src='{html.escape(name)}' alt='{html.escape(caption)}'>"
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;
max-width:1200px;color:#222;padding:0 16px}
h1{margin-bottom:4px}h2{border-bottom:1px solid #ccc;padding-bottom:4px;margin-top:32px}
.sub{color:#666;margin-top:0}.note{color:#666;font-size:90%}
figure{margin:16px 0}figure img{max-width:100%;border:1px solid #eee}
figcaption{color:#555;font-size:90%}
table{border-collapse:collapse;font-size:90%;margin:8px 0}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
table.kv th{background:#f6f6f6;white-space:nowrap}table.grid th{background:#f6f6f6}
td{word-break:break-word;max-width:800px}
.cards{display:flex;gap:12px;flex-wrap:wrap}.card{border:1px solid #ddd;border-radius:6px;
padding:8px 14px;min-width:120px}.card b{font-size:150%;display:block}
"""


def write_report(catalogue_dir: Path, out: Path, *, store: Path | None = None,
                 per_class: int = 8) -> Path:
    """Write ``out/index.html`` and its PNG plots for the catalogue at ``catalogue_dir``.

    Parameters
    ----------
    catalogue_dir : Path
        Catalogue directory written by ``skysieve classify``.
    out : Path
        Folder for the report (created; files of an earlier report are replaced).
    store : Path, optional
        Cutout store for the gallery. Default: the store recorded in the
        catalogue's metadata, if it still exists; without one the gallery is
        left out and the page says how to add it.
    per_class : int, default: 8
        Cutouts shown per class (1-32).

    Returns
    -------
    Path
        The ``index.html`` written.
    """
    from pipeline.classify.graph import REJECTS_FILE, SUMMARY_FILE

    catalogue_dir, out = Path(catalogue_dir), Path(out)
    catalogue.parts(catalogue_dir)
    if not (isinstance(per_class, int) and 1 <= per_class <= 32):
        raise ValueError(f"report: per_class={per_class!r} must be an integer in 1..32")
    meta = catalogue.read_metadata(catalogue_dir)
    classes = [str(c) for c in meta.get("classes", [])]
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out}: exists and is not a directory; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    colours = _colours(classes)
    summary = _read_json(catalogue_dir / SUMMARY_FILE)
    rejects = None
    if (catalogue_dir / REJECTS_FILE).exists():
        import pyarrow.parquet as pq

        rejects = pq.read_table(catalogue_dir / REJECTS_FILE).to_pandas()
    if store is None and meta.get("store") and Path(meta["store"]).exists():
        store = Path(meta["store"])

    with _duckdb(catalogue_dir) as con:
        names = [r[0] for r in con.execute("DESCRIBE catalogue").fetchall()]
        missing = [f"p_{c}" for c in classes if f"p_{c}" not in names]
        missing += [c for c in ("label", "confidence", "blur_score", "ra", "dec", "exposure",
                                "psf_fwhm", "source_id") if c not in names]
        if missing:
            raise ValueError(f"{catalogue_dir}: the catalogue lacks columns {missing!r}; "
                             "re-create it with `skysieve classify`")
        has_truth = "true_label" in names
        n_rows, n_known = con.execute(
            "SELECT count(*), " + ("count(*) FILTER (WHERE true_label <> '')" if has_truth
                                   else "0") + " FROM catalogue").fetchone()
        figures = [
            _figure(_plot_counts(con, classes, has_truth and n_known > 0, out, colours),
                    "Sources per predicted class (label = the most probable class)"
                    + ("; hatched: the true classes where known." if n_known else ".")),
            _figure(_plot_probabilities(con, classes, out, colours),
                    "Distribution of each class probability over all sources (grey) and over "
                    "the sources labelled with that class (line); log scale."),
        ]
        sample = _sample(con, ["ra", "dec", "label", "confidence", "blur_score"])
        figures.append(_figure(_plot_blur(sample, out),
                               "Confidence against blur score. A score of 1 means as sharp as "
                               "the PSF (point-like); above 1 the source looks wider than the "
                               "PSF: extended, or blurred."))
        figures.append(_figure(_plot_sky(sample, classes, out, colours),
                               "Sky positions coloured by predicted class (RA increases to "
                               "the left)."))
        stats = _exposure_stats(con)
        figures.append(_figure(_plot_psf(stats, out),
                               "PSF FWHM measured at ingest, per exposure: bar = median, "
                               "whiskers = 25th-75th percentile."))
        accuracy = None
        if n_known:
            name, accuracy = _plot_confusion(con, classes, out)
            figures.append(_figure(name, "Confusion matrix against true_label: each row is a "
                                         "true class, cells give the fraction (and count)."))
        gallery_html = ("<p class='note'>No cutout store: the gallery needs one. Rerun with "
                        "<code>skysieve report CATALOGUE --store STORE.zarr --out DIR</code>.</p>")
        if store is not None:
            name, shown = _plot_gallery(con, classes, Path(store), per_class, out, colours)
            gallery_html = _figure(name, f"{shown} cutouts from {store}: per class a "
                                         "deterministic random pick, then the least confident "
                                         "sources overall.")
        conf = con.execute("SELECT avg(confidence), quantile_cont(blur_score, 0.5), "
                           "count(*) FILTER (WHERE flags <> 0), count(DISTINCT exposure) "
                           "FROM catalogue").fetchone()

    cards = [("sources", f"{n_rows:,}"), ("exposures", f"{conf[3]:,}"),
             ("classes", str(len(classes))), ("mean confidence", f"{conf[0]:.3f}"),
             ("median blur score", f"{conf[1]:.2f}" if conf[1] is not None else "-"),
             ("flagged", f"{conf[2]:,}"),
             ("rejected inputs", f"{len(rejects):,}" if rejects is not None else "-")]
    if accuracy is not None:
        cards.append(("accuracy vs truth", f"{accuracy:.3f}"))
    cards_html = "".join(f"<div class='card'><b>{html.escape(v)}</b>{html.escape(k)}</div>"
                         for k, v in cards)
    provenance = [("catalogue", str(catalogue_dir.resolve())), ("model", meta.get("model")),
                  ("model architecture", meta.get("model_arch")),
                  ("model sha256", meta.get("model_sha256")),
                  ("skysieve version", meta.get("skysieve_version")),
                  ("classes", ", ".join(classes)),
                  ("healpix", meta.get("healpix_order")),
                  ("blur reference FWHM (px)", meta.get("blur_reference_fwhm")),
                  ("cutout store", meta.get("store")), ("run config", meta.get("run_config"))]
    summary_html = _table(list(summary.items())) if summary else \
        "<p class='note'>No _summary.json in the catalogue.</p>"
    if rejects is None:
        rejects_html = "<p class='note'>No _rejects.parquet in the catalogue.</p>"
    elif len(rejects) == 0:
        rejects_html = "<p>No input was rejected at ingest.</p>"
    else:
        rejects_html = _frame_table(rejects)
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>skysieve report: {html.escape(catalogue_dir.name)}</title><style>{_CSS}</style></head>
<body>
<h1>skysieve report</h1>
<p class="sub">{html.escape(str(catalogue_dir.resolve()))} &middot; model
{html.escape(str(meta.get("model")))} &middot; skysieve {html.escape(str(meta.get("skysieve_version")))}</p>
<div class="cards">{cards_html}</div>
<h2>Classes</h2>
{"".join(figures[:2])}
<h2>Blur and the sky</h2>
{"".join(figures[2:4])}
<h2>Exposures</h2>
{figures[4]}
{_frame_table(stats)}
{"<h2>Against the truth</h2>" + figures[5] if accuracy is not None else ""}
<h2>Cutouts</h2>
{gallery_html}
<h2>Provenance</h2>
{_table(provenance)}
<h2>Run summary</h2>
{summary_html}
<h2>Rejected inputs</h2>
{rejects_html}
</body></html>
"""
    index = out / "index.html"
    tmp = out / f".index.html.{os.getpid()}.tmp"
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(index)
    return index
