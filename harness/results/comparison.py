"""Two rows side by side: per-language deltas with paired bootstrap intervals, and the regression gate.

Both refuse rows from different judges (annotator or reference outputs): such deltas would measure
the judges, not the models. Win-rate intervals come from a paired bootstrap over the instructions
both rows answered (``harness.metrics.winrate.paired_bootstrap_average`` on each row's annotations, by
instruction id; one draw of instructions is shared by all languages, so the average's interval is
paired too). The length-controlled win rate gets a point delta only: its interval would need the GLM refitted
per resample. Published rows carry no annotations, so their deltas have no interval.

Example::

    from harness.results.comparison import check_regression, compare_rows
    from harness.results.rows import resolve_row
    a, b = resolve_row("demo-iter0"), resolve_row("demo-iter1")
    print(compare_rows(a, b, n_boot=1000))
    result = check_regression(b, a, tolerance=1.0, metric="lc")
    print(result.passed, result.failures)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import pandas as pd
from rich.table import Table
from rich.text import Text

from harness.results.leaderboard import (LANGUAGE_COLUMNS, METRIC_COLUMNS, METRIC_NAMES, canonical_order,
                                         check_metric, reasons_footnote)
from harness.results.rows import Row
from xlpref.errors import InputError
from xlpref.languages import check_languages

def check_same_judge(a: Row, b: Row, what: str) -> None:
    """Refuse to compare rows judged by different annotators or against different references."""
    if a.judge != b.judge:
        raise InputError(f"cannot {what} {a.row_id!r} and {b.row_id!r}: annotator/reference differ "
                         f"({a.annotator!r} vs {a.reference!r} against {b.annotator!r} vs {b.reference!r}); "
                         "expected rows judged by the same annotator against the same reference outputs")


def lc_not_estimable(row: Row, lang: str) -> str | None:
    """Why the row's LC in ``lang`` could not be estimated (metrics.json's ``lc_not_estimable``), or None."""
    return row.metrics.get(lang, {}).get("lc_not_estimable") or None


def _metric(row: Row, lang: str, metric: str) -> float:
    value = row.metrics.get(lang, {}).get(METRIC_COLUMNS[metric][0])
    return float(value) if value is not None else math.nan


def _shared_languages(a: Row, b: Row, langs: Sequence[str] | None) -> list[str]:
    if langs is None:
        return canonical_order(set(a.languages) & set(b.languages))
    langs = check_languages(list(langs))
    for row in (a, b):
        missing = [lang for lang in langs if lang not in row.metrics]
        if missing:
            raise InputError(f"row {row.row_id!r} has no results for {missing}; it has {row.languages}")
    return langs


def _preferences(row: Row, langs: Sequence[str]) -> dict[str, dict] | None:
    """{lang: {instruction id: preference for the model}}, or None when any language lacks annotations."""
    from harness.metrics.annotations import preferences_by_id

    found = {}
    for lang in langs:
        annotations = row.annotations(lang)
        if annotations is None:
            return None
        found[lang] = preferences_by_id(annotations)
    return found


def compare_rows(row_a: Row, row_b: Row, *, langs: Sequence[str] | None = None, n_boot: int = 2000,
                 seed: int = 0, confidence: float = 0.95) -> pd.DataFrame:
    """Per language and averaged: B minus A in WR (paired bootstrap CI) and LC (point delta).

    Returns:
        Columns lang, wr_a, wr_b, delta_wr, ci_low, ci_high, p_value, is_significant, n, lc_a, lc_b,
        delta_lc; the last line has lang "avg" (mean over the languages). Deltas in percentage points;
        without annotations on both sides the interval columns are empty and is_significant is <NA>.
    """
    from harness.metrics.bootstrap import paired_bootstrap_average

    check_same_judge(row_a, row_b, "compare")
    langs = _shared_languages(row_a, row_b, langs)
    if not langs:
        raise InputError(f"rows {row_a.row_id!r} ({row_a.languages}) and {row_b.row_id!r} ({row_b.languages}) "
                         "share no language")
    prefs_a, prefs_b = _preferences(row_a, langs), _preferences(row_b, langs)
    # One bootstrap for all languages: each replicate draws the same instructions in every language.
    boot = (paired_bootstrap_average(prefs_a, prefs_b, n_boot=n_boot, seed=seed, confidence=confidence)
            if prefs_a is not None and prefs_b is not None else None)
    lines = []
    for lang in langs + ["avg"]:
        if lang == "avg":
            values = {key: sum(line[key] for line in lines) / len(lines)
                      for key in ("wr_a", "wr_b", "lc_a", "lc_b")}
            interval = boot
        else:
            values = {f"{m}_{side}": _metric(row, lang, m) for m in ("wr", "lc")
                      for side, row in (("a", row_a), ("b", row_b))}
            interval = boot["per_language"][lang] if boot is not None else None
        line = {"lang": lang, **values}
        if interval is not None:
            line.update(delta_wr=interval["delta"], ci_low=interval["ci_low"], ci_high=interval["ci_high"],
                        p_value=interval["p_value"], is_significant=bool(interval["is_significant"]),
                        n=int(interval["n"]))
        else:
            line.update(delta_wr=values["wr_b"] - values["wr_a"], ci_low=math.nan, ci_high=math.nan,
                        p_value=math.nan, is_significant=pd.NA, n=pd.NA)
        # NaN when either LC is missing or not estimable: no delta is taken from a degenerate fit.
        line["delta_lc"] = values["lc_b"] - values["lc_a"]
        lines.append(line)
    frame = pd.DataFrame(lines, columns=["lang", "wr_a", "wr_b", "delta_wr", "ci_low", "ci_high", "p_value",
                                         "is_significant", "n", "lc_a", "lc_b", "delta_lc"])
    frame["is_significant"] = frame["is_significant"].astype("boolean")
    frame["n"] = frame["n"].astype("Int64")
    frame.attrs.update(row_a=row_a.row_id, row_b=row_b.row_id, confidence=confidence, n_boot=n_boot,
                       lc_not_estimable={f"{side} {lang}": reason for lang in langs
                                         for side, row in (("A", row_a), ("B", row_b))
                                         if (reason := lc_not_estimable(row, lang))})
    return frame


def _number(value: float, *, signed: bool = False) -> str:
    return "—" if pd.isna(value) else (f"{value:+.2f}" if signed else f"{value:.2f}")


def render_comparison(frame: pd.DataFrame) -> Table:
    """The comparison as a rich table; significant deltas in bold, green up, red down, with ``*``."""
    a, b, confidence = frame.attrs.get("row_a", "A"), frame.attrs.get("row_b", "B"), frame.attrs.get("confidence", 0.95)
    has_interval = frame["is_significant"].notna().any()
    caption = (f"ΔWR with its {100 * confidence:.0f}% paired bootstrap interval over the instructions both rows "
               "answered; * significant" if has_interval else
               "no annotations on both sides (e.g. published rows): point deltas only, no interval")
    caption += "; ΔLC: point delta only"
    not_estimable = frame.attrs.get("lc_not_estimable") or {}
    if not_estimable:
        caption += "\n— LC not estimable, so no ΔLC: " + reasons_footnote(not_estimable)
    table = Table(title=f"B minus A (A = {a}, B = {b})", caption=caption, caption_justify="left")
    for name in ("lang", "WR A", "WR B", "ΔWR", "interval", "p", "n", "LC A", "LC B", "ΔLC"):
        table.add_column(name, justify="left" if name == "lang" else "right", no_wrap=True)
    for line in frame.itertuples(index=False):
        is_significant = bool(line.is_significant) if not pd.isna(line.is_significant) else False
        style = ("bold green" if line.delta_wr > 0 else "bold red") if is_significant else ""
        delta = Text(_number(line.delta_wr, signed=True) + ("*" if is_significant else ""), style=style)
        interval = "—" if pd.isna(line.ci_low) else f"[{line.ci_low:+.2f}, {line.ci_high:+.2f}]"
        table.add_row(line.lang, _number(line.wr_a), _number(line.wr_b), delta, interval,
                      "—" if pd.isna(line.p_value) else f"{line.p_value:.3f}", "—" if pd.isna(line.n) else str(line.n),
                      _number(line.lc_a), _number(line.lc_b), _number(line.delta_lc, signed=True),
                      end_section=line.lang == frame["lang"].iloc[-2] if len(frame) > 1 else False)
    return table


@dataclass
class CheckResult:
    """The regression gate's verdict: passed, one message per failure, and the per-language table."""

    passed: bool
    failures: list[str]
    table: pd.DataFrame = field(repr=False)
    #: the answer-language gate's lines (``max_language_drop``), else None
    language_table: pd.DataFrame | None = field(default=None, repr=False)


def check_regression(run_row: Row, baseline_row: Row, *, tolerance: float = 1.0, metric: str = "lc",
                     langs: Sequence[str] | None = None, fail_on_significant: bool = False,
                     n_boot: int = 2000, seed: int = 0, max_language_drop: float | None = None) -> CheckResult:
    """Fail a language (or the average) when run < baseline - tolerance (points of ``metric``).

    Args:
        langs: languages to gate on (default: every language of the baseline).
        fail_on_significant: also fail a language whose WR the paired bootstrap finds significantly
            lower (needs annotations in both rows).
        metric: "lc" or "wr"; with "lc", a gated language whose LC is not estimable in either row makes
            the whole gate use WR instead (``table.attrs["lc_not_estimable"]`` says why).
        max_language_drop: also fail a language whose target-language rate fell, or whose mixed rate
            rose, by more than this many points (:func:`check_language`).
    Raises:
        InputError: different judges, a negative tolerance, or a baseline without ``metric``.
    """
    check_metric(metric)
    check_same_judge(run_row, baseline_row, "check")
    if not math.isfinite(tolerance) or tolerance < 0:
        raise InputError(f"tolerance {tolerance!r}; expected a number of points >= 0", field="tolerance")
    langs = check_languages(list(langs)) if langs is not None else canonical_order(baseline_row.languages)
    # A degenerate LC is not a measurement: the gate then uses the win rate, for every language alike.
    not_estimable = {f"{side} {lang}": reason for lang in langs
                     for side, row in (("run", run_row), ("baseline", baseline_row))
                     if (reason := lc_not_estimable(row, lang))} if metric == "lc" else {}
    if not_estimable:
        metric = "wr"
    name = METRIC_NAMES[metric]
    missing_baseline = [lang for lang in langs if math.isnan(_metric(baseline_row, lang, metric))]
    if missing_baseline:
        raise InputError(f"baseline {baseline_row.row_id!r} has no {name} for {missing_baseline}; "
                         "expected the gated metric in every gated language")
    significance = None
    if fail_on_significant:
        shared = [lang for lang in langs if lang in run_row.metrics]
        significance = compare_rows(baseline_row, run_row, langs=shared, n_boot=n_boot, seed=seed).set_index("lang")
        if significance["is_significant"].isna().any():
            raise InputError("fail_on_significant needs annotations.json in both rows; published rows have none")
    lines, failures = [], []
    for lang in langs + ["avg"]:
        if lang == "avg":
            base = sum(line["baseline"] for line in lines) / len(lines)
            run = sum(line["run"] for line in lines) / len(lines)  # NaN when the run misses a language
        else:
            base, run = _metric(baseline_row, lang, metric), _metric(run_row, lang, metric)
        line = {"lang": lang, "baseline": base, "run": run, "delta": run - base, "threshold": base - tolerance,
                "is_significantly_worse": pd.NA, "status": "ok"}
        if math.isnan(run):
            line["status"] = "missing"
            failures.append(f"{lang}: the run has no {name}" + (" for every language" if lang == "avg" else ""))
        elif run < base - tolerance:
            line["status"] = "regressed"
            failures.append(f"{lang}: {name} {run:.2f} < baseline {base:.2f} - tolerance {tolerance:.2f}")
        if significance is not None and lang in significance.index:
            worse = bool(significance.at[lang, "is_significant"]) and significance.at[lang, "delta_wr"] < 0
            line["is_significantly_worse"] = worse
            if worse and line["status"] == "ok":
                line["status"] = "significantly worse"
                failures.append(f"{lang}: WR significantly lower (p={significance.at[lang, 'p_value']:.3f})")
        lines.append(line)
    table = pd.DataFrame(lines)
    table["is_significantly_worse"] = table["is_significantly_worse"].astype("boolean")
    table.attrs.update(run=run_row.row_id, baseline=baseline_row.row_id, metric=metric, tolerance=tolerance,
                       lc_not_estimable=not_estimable)
    language_table = None
    if max_language_drop is not None:
        language_table, language_failures = check_language(run_row, baseline_row, langs=langs,
                                                           max_drop=max_language_drop)
        failures += language_failures
    return CheckResult(passed=not failures, failures=failures, table=table, language_table=language_table)


def render_check(result: CheckResult) -> Table:
    """The gate's table: one line per language and the average, failures in red."""
    attrs = result.table.attrs
    name = METRIC_NAMES[attrs.get("metric", "lc")]
    verdict = "[green]PASS[/]" if result.passed else "[red]FAIL[/]"
    caption = f"{name}, tolerance {attrs.get('tolerance', 0):.2f} points"
    if attrs.get("lc_not_estimable"):
        caption += "; gated on WR because LC is not estimable: " + reasons_footnote(attrs["lc_not_estimable"])
    table = Table(title=f"{verdict} {attrs.get('run')} against {attrs.get('baseline')}", caption=caption,
                  caption_justify="left")
    for column in ("lang", f"baseline {name}", f"run {name}", "Δ", "status"):
        table.add_column(column, justify="left" if column in ("lang", "status") else "right", no_wrap=True)
    for line in result.table.itertuples(index=False):
        style = "" if line.status == "ok" else "bold red"
        table.add_row(line.lang, _number(line.baseline), _number(line.run), _number(line.delta, signed=True),
                      Text(line.status, style=style))
    return table


# -- answer-language fidelity ---------------------------------------------------------------------

#: language column suffix -> (display name, True when higher is better)
_LANGUAGE_DIRECTIONS = {"target": ("in-language %", True), "mixed": ("mixed %", False), "gated_wr": ("gated WR", True)}


def _language_value(row: Row, lang: str, suffix: str) -> float:
    key = next(k for k, v in LANGUAGE_COLUMNS.items() if v == suffix)
    value = row.metrics.get(lang, {}).get(key)
    return float(value) if value is not None else math.nan


def compare_language(row_a: Row, row_b: Row, *, langs: Sequence[str] | None = None) -> pd.DataFrame:
    """Per language and averaged: target-language rate, mixed rate and language-gated WR of A and B, and B - A.

    Returns:
        Columns lang, then ``{target,mixed,gated_wr}_{a,b}`` and ``delta_{target,mixed,gated_wr}``
        (points; NaN where a row lacks the number). Empty when neither row has language numbers.
    """
    langs = _shared_languages(row_a, row_b, langs)
    lines = []
    for lang in langs:
        line = {"lang": lang}
        for suffix in _LANGUAGE_DIRECTIONS:
            a, b = _language_value(row_a, lang, suffix), _language_value(row_b, lang, suffix)
            line.update({f"{suffix}_a": a, f"{suffix}_b": b, f"delta_{suffix}": b - a})
        lines.append(line)
    frame = pd.DataFrame(lines)
    if frame.empty or frame.drop(columns="lang").isna().all().all():
        return frame.iloc[0:0]
    average = {"lang": "avg", **{c: frame[c].mean(skipna=False) for c in frame.columns if c != "lang"}}
    frame = pd.concat([frame, pd.DataFrame([average])], ignore_index=True)
    frame.attrs.update(row_a=row_a.row_id, row_b=row_b.row_id)
    return frame


def render_language_comparison(frame: pd.DataFrame) -> Table:
    """The answer-language comparison: A, B and B - A per number (changes for the worse in red)."""
    a, b = frame.attrs.get("row_a", "A"), frame.attrs.get("row_b", "B")
    table = Table(title=f"answer language, B minus A (A = {a}, B = {b})", caption_justify="left",
                  caption="in-language %: outputs identified in the instruction's language · mixed %: outputs "
                          "mixing languages · gated WR: WR with wrong-language outputs as losses (docs/diagnostics.md)")
    table.add_column("lang", no_wrap=True)
    for suffix, (name, _) in _LANGUAGE_DIRECTIONS.items():
        for column in (f"{name} A", f"{name} B", "Δ"):
            table.add_column(column, justify="right", no_wrap=True)
    for line in frame.to_dict("records"):
        cells = []
        for suffix, (_, higher_is_better) in _LANGUAGE_DIRECTIONS.items():
            delta = line[f"delta_{suffix}"]
            is_worse = not pd.isna(delta) and (delta < 0 if higher_is_better else delta > 0)
            cells += [_number(line[f"{suffix}_a"]), _number(line[f"{suffix}_b"]),
                      Text(_number(delta, signed=True), style="red" if is_worse else "")]
        table.add_row(line["lang"], *cells, end_section=line["lang"] == frame["lang"].iloc[-2] if len(frame) > 1
                      else False)
    return table


def check_language(run_row: Row, baseline_row: Row, *, langs: Sequence[str] | None = None,
                   max_drop: float = 5.0) -> tuple[pd.DataFrame, list[str]]:
    """The answer-language gate: a language fails when its target-language rate fell, or its mixed rate
    rose, by more than ``max_drop`` points against the baseline.

    Returns:
        (lines: lang, baseline/run target and mixed rates, status; failure messages)
    Raises:
        InputError: a negative ``max_drop``, or a baseline without language numbers in a gated language.
    """
    if not math.isfinite(max_drop) or max_drop < 0:
        raise InputError(f"max language drop {max_drop!r}; expected a number of points >= 0",
                         field="max_language_drop")
    langs = check_languages(list(langs)) if langs is not None else canonical_order(baseline_row.languages)
    missing = [lang for lang in langs if math.isnan(_language_value(baseline_row, lang, "target"))]
    if missing:
        raise InputError(f"baseline {baseline_row.row_id!r} has no target_language_rate for {missing}; expected "
                         "metrics.json evaluated with the answer-language columns (docs/diagnostics.md)")
    lines, failures = [], []
    for lang in langs:
        line = {"lang": lang, "status": "ok"}
        for suffix in ("target", "mixed"):
            line[f"baseline_{suffix}"] = _language_value(baseline_row, lang, suffix)
            line[f"run_{suffix}"] = _language_value(run_row, lang, suffix)
        if math.isnan(line["run_target"]):
            line["status"] = "missing"
            failures.append(f"{lang}: the run has no target_language_rate")
        elif line["run_target"] < line["baseline_target"] - max_drop:
            line["status"] = "language dropped"
            failures.append(f"{lang}: in-language {line['run_target']:.1f}% < baseline "
                            f"{line['baseline_target']:.1f}% - {max_drop:.1f}")
        elif (not math.isnan(line["run_mixed"]) and not math.isnan(line["baseline_mixed"])
              and line["run_mixed"] > line["baseline_mixed"] + max_drop):
            line["status"] = "more mixing"
            failures.append(f"{lang}: mixed {line['run_mixed']:.1f}% > baseline {line['baseline_mixed']:.1f}% + "
                            f"{max_drop:.1f}")
        lines.append(line)
    table = pd.DataFrame(lines)
    table.attrs.update(run=run_row.row_id, baseline=baseline_row.row_id, max_drop=max_drop)
    return table, failures


def render_language_check(table: pd.DataFrame) -> Table:
    """The answer-language gate's lines; failures in red."""
    result = Table(title=f"answer language: {table.attrs.get('run')} against {table.attrs.get('baseline')}",
                   caption=f"fails when in-language % falls or mixed % rises by more than "
                           f"{table.attrs.get('max_drop', 0):.1f} points", caption_justify="left")
    for column in ("lang", "baseline in-language %", "run in-language %", "baseline mixed %", "run mixed %", "status"):
        result.add_column(column, justify="left" if column in ("lang", "status") else "right", no_wrap=True)
    for line in table.to_dict("records"):
        result.add_row(line["lang"], _number(line["baseline_target"]), _number(line["run_target"]),
                       _number(line["baseline_mixed"]), _number(line["run_mixed"]),
                       Text(line["status"], style="" if line["status"] == "ok" else "bold red"))
    return result
