"""`compare` and `check` as data: JSON (for tools), CSV (for spreadsheets), Markdown (for a pull-request comment).

Each format is built from the same frames the terminal tables render (``compare_rows`` and
``compare_language``; ``check_regression``), merged by language, so the formats never disagree.
Missing numbers are ``null`` in JSON, empty in CSV and ``—`` in Markdown.

Example::

    from harness.results.export import comparison_json, comparison_markdown
    print(comparison_markdown(compare_rows(a, b), compare_language(a, b)))
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from xlpref.jsonio import write_text_atomic


def _merge(frame: pd.DataFrame, extra: pd.DataFrame | None) -> pd.DataFrame:
    """``frame`` with the columns of ``extra`` beside it, matched on ``lang`` (extra's own names prefixed)."""
    if extra is None or extra.empty:
        return frame
    extra = extra.rename(columns={c: f"language_{c}" if c in frame.columns and c != "lang" else c
                                  for c in extra.columns})
    merged = frame.merge(extra, on="lang", how="left")
    merged.attrs.update(frame.attrs)
    return merged


def _plain(value):
    """A cell as JSON: NaN / NA -> None, numpy scalars -> Python numbers."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    return value.item() if hasattr(value, "item") else value


def _records(frame: pd.DataFrame) -> list[dict]:
    return [{k: _plain(v) for k, v in record.items()} for record in frame.astype(object).to_dict("records")]


def _csv(frame: pd.DataFrame) -> str:
    return frame.to_csv(index=False, float_format="%.4f", lineterminator="\n")


def _markdown(frame: pd.DataFrame, columns: dict[str, str], *, signed: tuple[str, ...] = ()) -> str:
    """A GitHub pipe table: ``columns`` maps frame column -> header; numbers with 2 decimals."""
    def cell(name, value):
        value = _plain(value)
        if value is None:
            return "—"
        if isinstance(value, bool):
            return "yes" if value else "no"
        if isinstance(value, float):
            return f"{value:+.2f}" if name in signed else f"{value:.2f}"
        return str(value).replace("|", "\\|")

    present = [c for c in columns if c in frame.columns]
    lines = ["| " + " | ".join(columns[c] for c in present) + " |",
             "|" + "|".join("---" if c == "lang" else "---:" for c in present) + "|"]
    lines += ["| " + " | ".join(cell(c, row[c]) for c in present) + " |" for _, row in frame.iterrows()]
    return "\n".join(lines)


# -- compare ---------------------------------------------------------------------------------------

_COMPARE_MD = {"lang": "lang", "wr_a": "WR A", "wr_b": "WR B", "delta_wr": "ΔWR", "ci_low": "CI low",
               "ci_high": "CI high", "p_value": "p", "is_significant": "significant", "n": "n", "lc_a": "LC A",
               "lc_b": "LC B", "delta_lc": "ΔLC", "target_a": "in-language % A", "target_b": "in-language % B",
               "delta_target": "Δ in-language", "mixed_a": "mixed % A", "mixed_b": "mixed % B",
               "delta_mixed": "Δ mixed", "gated_wr_a": "gated WR A", "gated_wr_b": "gated WR B",
               "delta_gated_wr": "Δ gated WR"}


def comparison_json(frame: pd.DataFrame, language: pd.DataFrame | None = None) -> str:
    attrs = frame.attrs
    document = {"row_a": attrs.get("row_a"), "row_b": attrs.get("row_b"), "confidence": attrs.get("confidence"),
                "n_boot": attrs.get("n_boot"), "lc_not_estimable": attrs.get("lc_not_estimable") or {},
                "languages": _records(_merge(frame, language))}
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def comparison_csv(frame: pd.DataFrame, language: pd.DataFrame | None = None) -> str:
    return _csv(_merge(frame, language))


def comparison_markdown(frame: pd.DataFrame, language: pd.DataFrame | None = None) -> str:
    attrs = frame.attrs
    confidence = attrs.get("confidence", 0.95)
    text = [f"**B minus A** (A = `{attrs.get('row_a')}`, B = `{attrs.get('row_b')}`): ΔWR with its "
            f"{100 * confidence:.0f}% paired bootstrap interval, ΔLC a point delta", "",
            _markdown(frame, _COMPARE_MD, signed=("delta_wr", "ci_low", "ci_high", "delta_lc"))]
    if language is not None and not language.empty:
        text += ["", "**Answer language**", "",
                 _markdown(language, _COMPARE_MD, signed=("delta_target", "delta_mixed", "delta_gated_wr"))]
    return "\n".join(text) + "\n"


# -- check -----------------------------------------------------------------------------------------

_CHECK_MD = {"lang": "lang", "baseline": "baseline", "run": "run", "delta": "Δ", "threshold": "threshold",
             "status": "status", "baseline_target": "baseline in-language %", "run_target": "run in-language %",
             "baseline_mixed": "baseline mixed %", "run_mixed": "run mixed %", "language_status": "language status"}


def check_json(result) -> str:
    attrs = result.table.attrs
    document = {"passed": result.passed, "run": attrs.get("run"), "baseline": attrs.get("baseline"),
                "metric": attrs.get("metric"), "tolerance": attrs.get("tolerance"),
                "lc_not_estimable": attrs.get("lc_not_estimable") or {}, "failures": list(result.failures),
                "languages": _records(_merge(result.table, result.language_table))}
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def check_csv(result) -> str:
    return _csv(_merge(result.table, result.language_table))


def check_markdown(result) -> str:
    attrs = result.table.attrs
    verdict = "✅ PASS" if result.passed else "❌ FAIL"
    text = [f"**{verdict}** `{attrs.get('run')}` against `{attrs.get('baseline')}` "
            f"({str(attrs.get('metric', '')).upper()}, tolerance {attrs.get('tolerance', 0):.2f} points)", "",
            _markdown(_merge(result.table, result.language_table), _CHECK_MD, signed=("delta",))]
    if result.failures:
        text += [""] + [f"- regressed: {failure}" for failure in result.failures]
    return "\n".join(text) + "\n"


def emit(path: Path | str, text: str) -> None:
    """Write ``text`` to ``path`` atomically, or to stdout when ``path`` is ``-``."""
    if str(path) == "-":
        import click

        click.echo(text, nl=False)
    else:
        write_text_atomic(Path(path), text)
