"""The leaderboard as a static site: ``index.html`` (one table per judge group) and one page per row.

The site is self-contained, so a team can open it from disk (``file://``) or publish the folder as it
is: the pages load only ``assets/site.js`` and ``assets/site.css`` (written here, no library, no web
font, no request leaving the page) and the run plots under ``plots/``. Each page carries its data as
JSON inside ``<script type="application/json">``; the script builds the DOM from it with
``textContent`` only, so a model output holding ``<script>`` or HTML is shown as text and never runs.
The JSON is written with ``<``, ``>`` and ``&`` as ``\\u`` escapes, so no output can close the block.

Example::

    from harness.results.site import build_site
    build_site("results", "results/site")   # -> results/site/index.html, rows/<row_id>.html, plots/*.png
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Sequence
from html import escape
from pathlib import Path
from typing import Any

import pandas as pd

from harness.results.leaderboard import (LANGUAGE_COLUMNS, METRIC_COLUMNS, canonical_order, group_caption,
                                         group_languages, group_title, has_language_columns, leaderboard_frame)
from harness.results.rows import Row, judge_agreements, read_rows
from xlpref.jsonio import write_text_atomic

ASSETS = Path(__file__).parent / "site_assets"
ASSET_FILES = ("site.css", "site.js")


def _number(value: Any) -> float | None:
    if value is None or value is pd.NA:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def _group_data(frame: pd.DataFrame, group_id: int, group: pd.DataFrame, n_groups: int, pages: set[str]) -> dict:
    first = group.iloc[0]
    metric = first.get("ranked_by") or "lc"
    langs = group_languages(frame, group_id)
    has_language = has_language_columns(group, langs)
    caps = [c for c in frame.columns if c.startswith("cap_") and group[c].notna().any()]
    rows = []
    for _, row in group.iterrows():
        values = {}
        for lang in [*langs, "avg"]:
            for m in METRIC_COLUMNS:
                values[f"{lang}_{m}"] = [_number(row[f"{lang}_{m}"]), _number(row[f"{lang}_{m}_se"])]
            if has_language:
                for suffix in LANGUAGE_COLUMNS.values():
                    values[f"{lang}_{suffix}"] = [_number(row.get(f"{lang}_{suffix}")), None]
        values.update({c: [_number(row[c]), None] for c in caps})
        rows.append({"rank": None if pd.isna(row["rank"]) else int(row["rank"]), "label": row["label"],
                     "row_id": row["row_id"], "model": row["model"], "values": values,
                     "page": f"rows/{row['row_id']}.html" if row["row_id"] in pages else None})
    return {"title": group_title(first), "published": first["kind"] == "published", "langs": langs,
            "ranked_by": metric, "language_columns": has_language, "caps": [c.removeprefix("cap_") for c in caps],
            "caption": group_caption(group, first, langs, langs, metric, has_language, n_groups), "rows": rows}


def index_data(rows: Sequence[Row], pages: set[str], plots: Sequence[str]) -> dict:
    """What index.html shows: the full leaderboard (every row, each table its own languages) and the plots."""
    agreements = judge_agreements(rows)
    frame = leaderboard_frame(rows, metric="lc", agreements=agreements)
    n_groups = frame["group"].nunique() if not frame.empty else 0
    groups = [_group_data(frame, int(group_id), group, n_groups, pages)
              for group_id, group in frame.groupby("group", sort=True)]
    return {"groups": groups, "plots": list(plots)}


def _preference(annotation: dict) -> float | None:
    value = annotation.get("preference")
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def row_data(row: Row) -> dict:
    """What a row page shows: per language and instruction, the model's and the reference's output,
    the judge's preference (AlpacaEval's 1..2, 2 = the model's output), which output the judge saw first."""
    items = []
    langs = canonical_order(row.languages)
    for lang in langs:
        for a in row.annotations(lang) or []:
            model, reference = str(a.get("output_2") or ""), str(a.get("output_1") or "")
            items.append({"lang": lang, "id": a.get("id"), "instruction": str(a.get("instruction") or ""),
                          "output": model, "reference": reference, "preference": _preference(a),
                          # AlpacaEval shows output_1 (the reference) first unless the pair was switched.
                          "first": "model" if a.get("is_switched_outputs") else "reference",
                          "len_output": len(model), "len_reference": len(reference)})
    metrics = {lang: {k: _number(m.get(k)) for k in ("win_rate", "standard_error", "length_controlled_winrate",
                                                      "lc_standard_error", "n_total")}
               for lang, m in row.metrics.items()}
    return {"row": {k: row.meta.get(k) for k in ("row_id", "label", "model", "run", "iteration", "annotator",
                                                 "reference", "source", "kind")},
            "langs": langs, "metrics": metrics, "items": items}


def _script_json(data: Any) -> str:
    """JSON safe inside a <script> block: no '<', '>' or '&' that could end it or open a comment."""
    text = json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def _page(title: str, kind: str, data: Any, depth: int) -> str:
    up = "../" * depth
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'">
<title>{escape(title)}</title>
<link rel="stylesheet" href="{up}assets/site.css">
</head>
<body data-page="{kind}">
<noscript>This page builds its tables with JavaScript; the same numbers are in leaderboard.csv.</noscript>
<main id="app"></main>
<script id="data" type="application/json">{_script_json(data)}</script>
<script src="{up}assets/site.js"></script>
</body>
</html>
"""


def build_site(results_dir: str | Path, out_dir: str | Path, *, plots: bool = True) -> Path:
    """Write the site for the rows under ``results_dir`` into ``out_dir``; returns index.html.

    Pages of rows no longer in the results are removed, so the folder mirrors the results.
    """
    out = Path(out_dir)
    rows = read_rows(results_dir)
    pages = {r.row_id for r in rows if not r.is_published}
    (out / "rows").mkdir(parents=True, exist_ok=True)
    (out / "assets").mkdir(parents=True, exist_ok=True)
    for name in ASSET_FILES:
        write_text_atomic(out / "assets" / name, (ASSETS / name).read_text(encoding="utf-8"))
    plot_names: list[str] = []
    if plots and any(r.run is not None and r.iteration is not None for r in rows):
        from harness.results.plots import plot_by_iteration

        shutil.rmtree(out / "plots", ignore_errors=True)
        plot_names = [f"plots/{p.name}" for p in plot_by_iteration(rows, out / "plots")]
    for row in rows:
        if row.row_id in pages:
            write_text_atomic(out / "rows" / f"{row.row_id}.html",
                              _page(f"{row.label} — X-AlpacaEval outputs", "row", row_data(row), depth=1))
    for stale in (out / "rows").glob("*.html"):
        if stale.stem not in pages:
            stale.unlink()
    index = out / "index.html"
    write_text_atomic(index, _page("X-AlpacaEval leaderboard", "index", index_data(rows, pages, plot_names), depth=0))
    for path in out.rglob("*"):  # atomic writes make private files; a site is read by a web server's user
        path.chmod(0o755 if path.is_dir() else 0o644)
    return index
