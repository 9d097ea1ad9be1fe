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
with the catalogue.  The figures are drawn by
:mod:`pipeline.catalogue.report_plots`; this module lays out the page.  Every
file is written atomically (:func:`pipeline.files.atomic_write`).
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from pipeline.catalogue import report_plots as plots
from pipeline.catalogue.api import connect
from pipeline.catalogue.layout import REJECTS_FILE, SUMMARY_FILE
from pipeline.catalogue.part_files import parts, read_metadata
from pipeline.catalogue.report_plots import REPORT_PLOTS
from pipeline.errors import CatalogueError
from pipeline.files import atomic_write

__all__ = ["write_report", "REPORT_PLOTS"]

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

    Raises
    ------
    CatalogueError
        A bad ``per_class``, or a catalogue without the columns the report plots.
    """
    catalogue_dir, out = Path(catalogue_dir), Path(out)
    parts(catalogue_dir)
    if not (isinstance(per_class, int) and 1 <= per_class <= 32):
        raise CatalogueError(f"report: per_class={per_class!r} must be an integer in 1..32")
    meta = read_metadata(catalogue_dir)
    classes = [str(c) for c in meta.get("classes", [])]
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out}: exists and is not a directory; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    colours = plots.colours_for(classes)
    summary = _read_json(catalogue_dir / SUMMARY_FILE)
    rejects = None
    if (catalogue_dir / REJECTS_FILE).exists():
        import pyarrow.parquet as pq

        rejects = pq.read_table(catalogue_dir / REJECTS_FILE).to_pandas()
    if store is None and meta.get("store") and Path(meta["store"]).exists():
        store = Path(meta["store"])

    with connect(catalogue_dir) as con:
        names = [r[0] for r in con.execute("DESCRIBE catalogue").fetchall()]
        missing = [f"p_{c}" for c in classes if f"p_{c}" not in names]
        missing += [c for c in ("label", "confidence", "blur_score", "ra", "dec", "exposure",
                                "psf_fwhm", "source_id") if c not in names]
        if missing:
            raise CatalogueError(f"{catalogue_dir}: the catalogue lacks columns {missing!r}; "
                             "re-create it with `skysieve classify`")
        has_truth = "true_label" in names
        n_rows, n_known = con.execute(
            "SELECT count(*), " + ("count(*) FILTER (WHERE true_label <> '')" if has_truth
                                   else "0") + " FROM catalogue").fetchone()
        figures = [
            _figure(plots.plot_counts(con, classes, has_truth and n_known > 0, out, colours),
                    "Sources per predicted class (label = the most probable class)"
                    + ("; hatched: the true classes where known." if n_known else ".")),
            _figure(plots.plot_probabilities(con, classes, out, colours),
                    "Distribution of each class probability over all sources (grey) and over "
                    "the sources labelled with that class (line); log scale."),
        ]
        sample = plots.sample_rows(con, ["ra", "dec", "label", "confidence", "blur_score"])
        figures.append(_figure(plots.plot_blur(sample, out),
                               "Confidence against blur score. A score of 1 means as sharp as "
                               "the PSF (point-like); above 1 the source looks wider than the "
                               "PSF: extended, or blurred."))
        figures.append(_figure(plots.plot_sky(sample, classes, out, colours),
                               "Sky positions coloured by predicted class (RA increases to "
                               "the left)."))
        stats = plots.exposure_stats(con)
        figures.append(_figure(plots.plot_psf(stats, out),
                               "PSF FWHM measured at ingest, per exposure: bar = median, "
                               "whiskers = 25th-75th percentile."))
        accuracy = None
        if n_known:
            name, accuracy = plots.plot_confusion(con, classes, out)
            figures.append(_figure(name, "Confusion matrix against true_label: each row is a "
                                         "true class, cells give the fraction (and count)."))
        gallery_html = ("<p class='note'>No cutout store: the gallery needs one. Rerun with "
                        "<code>skysieve report CATALOGUE --store STORE.zarr --out DIR</code>.</p>")
        if store is not None:
            name, shown = plots.plot_gallery(con, classes, Path(store), per_class, out, colours)
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
    return atomic_write(out / "index.html", page)
