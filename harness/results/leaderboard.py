"""The leaderboard: stored rows -> one DataFrame (data) -> rich tables, one per judge (rendering).

Rows are grouped by judge, ``Row.group_key`` = (published?, annotator, reference, paper table), and
ranked only inside their group: numbers from different annotators or reference outputs are never
ranked together, and the paper's published rows form their own groups, one per paper table.
An LC that could not be estimated (``lc_not_estimable`` in metrics.json) is a dash with a footnote
giving the reason; it counts as missing, so it ranks nothing.
A row's average covers its table's languages only when
it has the metric for every one of them; otherwise the average is empty, the row is not ranked and
the caption says which languages are missing. Our tables use the chosen languages; a published table
keeps the paper's own (Table 2: five, the low-resource table: four), so its averages are the paper's.
A table where no row has the ranking metric (the low-resource table has WR only) ranks by the other.
At a width the wide table does not fit, :func:`leaderboard_layouts` gives a narrower layout.

Example::

    from rich.console import Console
    from harness.results.leaderboard import leaderboard_frame, render_leaderboard, write_leaderboard_csv
    from harness.results.rows import read_rows
    frame = leaderboard_frame(read_rows("results"), langs=["en", "es"], metric="lc")
    write_leaderboard_csv(frame, "results/leaderboard.csv")
    for table in render_leaderboard(frame, metric="lc"):
        Console().print(table)
"""

from __future__ import annotations

import io
import math
import re
from typing import Callable, Iterable, Mapping, Sequence

import pandas as pd
from rich.console import Group
from rich.table import Table
from rich.text import Text

from harness.results.rows import Row
from xlpref.errors import InputError
from xlpref.jsonio import atomic_open
from xlpref.languages import LANGUAGE_NAMES, check_languages

# leaderboard metric -> (metrics.json value column, its standard error column)
METRIC_COLUMNS = {"lc": ("length_controlled_winrate", "lc_standard_error"), "wr": ("win_rate", "standard_error")}
METRIC_NAMES = {"lc": "LC", "wr": "WR"}
# answer-language columns (metrics.json key -> column suffix); see harness/metrics/language.py
LANGUAGE_COLUMNS = {"target_language_rate": "target", "mixed_language_rate": "mixed",
                    "language_gated_winrate": "gated_wr"}
_LANG_COLUMN = re.compile(r"([a-z]{2,3})_lc")


def check_metric(metric: str) -> str:
    if metric not in METRIC_COLUMNS:
        raise InputError(f"unknown metric {metric!r}; expected one of {sorted(METRIC_COLUMNS)}", field="metric")
    return metric


def canonical_order(langs: Iterable[str]) -> list[str]:
    """Languages in LANGUAGE_NAMES order (en, es, de, fr, ru, ...), unknown ones last, alphabetically."""
    order = {code: i for i, code in enumerate(LANGUAGE_NAMES)}
    return sorted(set(langs), key=lambda code: (order.get(code, len(order)), code))


def default_languages(rows: Sequence[Row]) -> list[str]:
    """Our rows' languages; with only published rows, the languages at least half of them have."""
    ours = [r for r in rows if not r.is_published]
    if ours:
        return canonical_order(lang for r in ours for lang in r.languages)
    counts = pd.Series([lang for r in rows for lang in r.languages], dtype=object).value_counts()
    return canonical_order(lang for lang, n in counts.items() if 2 * n >= len(rows))


def reasons_footnote(where_to_reason: Mapping[str, str]) -> str:
    """``{"row lang": reason}`` as one line per distinct reason: ``reason (row lang, row lang, ...)``."""
    by_reason: dict[str, list[str]] = {}
    for where, reason in where_to_reason.items():
        by_reason.setdefault(reason, []).append(where)
    return "; ".join(f"{reason} ({', '.join(places)})" for reason, places in by_reason.items())


def _value(metrics: Mapping | None, key: str) -> float:
    value = None if metrics is None else metrics.get(key)
    return float(value) if value is not None else math.nan


def row_agreement(row: Row, agreements: Mapping[str, Mapping]) -> Mapping | None:
    """The judge's agreement with GPT-4 Turbo for this row: as recorded in its metrics at evaluation,
    else from ``agreements`` (annotators/<name>/agreement.json) unless that was measured for another config."""
    recorded = [m["annotator_agreement"] for m in row.metrics.values()
                if isinstance(m.get("annotator_agreement"), dict)]
    if recorded:
        return recorded[0]
    measured = agreements.get(row.annotator)
    config_hashes = {m.get("annotator_config_hash") for m in row.metrics.values()} - {None}
    if measured is None or (measured.get("config_hash") and config_hashes
                            and {measured["config_hash"]} != config_hashes):
        return None
    return measured


def _row_record(row: Row, langs: Sequence[str], agreement: Mapping | None, avg_langs: Sequence[str]) -> dict:
    record = {"row_id": row.row_id, "label": row.label, "model": row.model, "run": row.run,
              "iteration": row.iteration, "kind": row.kind, "annotator": row.annotator,
              "annotator_is_demo": row.annotator_is_demo,
              "agreement_clear": _value(agreement, "agreement_clear"),
              "agreement_all": _value(agreement, "agreement_all"),
              "reference": row.reference, "published_table": row.published_table}
    for lang in langs:
        metrics = row.metrics.get(lang)
        for metric, (value_key, se_key) in METRIC_COLUMNS.items():
            record[f"{lang}_{metric}"] = _value(metrics, value_key)
            record[f"{lang}_{metric}_se"] = _value(metrics, se_key)
        record[f"{lang}_n"] = _value(metrics, "n_total")
        record[f"{lang}_lc_not_estimable"] = (metrics or {}).get("lc_not_estimable") or ""
    record["avg_langs"] = ",".join(avg_langs)
    for metric in METRIC_COLUMNS:
        values = [record[f"{lang}_{metric}"] for lang in avg_langs]
        errors = [record[f"{lang}_{metric}_se"] for lang in avg_langs]
        missing = [lang for lang, v in zip(avg_langs, values) if math.isnan(v)]
        complete = bool(avg_langs) and not missing
        record[f"avg_{metric}"] = sum(values) / len(values) if complete else math.nan
        # Languages share their instructions (translations), so this independence-based SE is approximate;
        # `xlpref compare` gives the paired bootstrap interval instead.
        record[f"avg_{metric}_se"] = (math.sqrt(sum(e * e for e in errors)) / len(errors)
                                      if complete and not any(math.isnan(e) for e in errors) else math.nan)
        record[f"avg_{metric}_missing"] = ",".join(missing)
    record.update(_language_record(row, langs, avg_langs))
    for task, score in row.capabilities.items():
        record[f"cap_{task}"] = score
    record["source"] = row.source
    return record


def _language_record(row: Row, langs: Sequence[str], avg_langs: Sequence[str]) -> dict:
    """Per language and averaged: target-language rate, mixed rate, language-gated win rate (NaN when absent)."""
    record = {}
    for key, suffix in LANGUAGE_COLUMNS.items():
        record.update({f"{lang}_{suffix}": _value(row.metrics.get(lang), key) for lang in langs})
        values = [record[f"{lang}_{suffix}"] for lang in avg_langs]
        complete = bool(values) and not any(math.isnan(v) for v in values)
        record[f"avg_{suffix}"] = sum(values) / len(values) if complete else math.nan
    return record


def leaderboard_frame(rows: Sequence[Row], *, langs: Sequence[str] | None = None, metric: str = "lc",
                      agreements: Mapping[str, Mapping] | None = None) -> pd.DataFrame:
    """One line per row: per language lc, lc_se, wr, wr_se, n; averages; rank within its judge group.

    Args:
        langs: languages to show and average over (default: :func:`default_languages`).
        metric: "lc" or "wr", the ranking metric.
        agreements: {annotator: agreement.json content}, shown beside the judge's name.
    Returns:
        A DataFrame in deterministic order: our judge groups (by annotator, reference), then the
        published group; inside a group by rank, then label and row id. ``group`` numbers the groups.
    """
    check_metric(metric)
    langs = list(check_languages(list(langs))) if langs is not None else default_languages(rows)
    agreements = agreements or {}
    group_keys = [r.group_key for r in rows]
    groups = sorted(set(group_keys))
    # A published table keeps the paper's languages, so its average is the paper's own (Table 2: five).
    group_langs = {key: canonical_order(lang for r in rows if r.group_key == key for lang in r.languages)
                   if key[0] else langs for key in groups}
    all_langs = langs + [lang for lang in canonical_order(lang for key in groups for lang in group_langs[key])
                         if lang not in langs]
    records = [_row_record(r, all_langs, row_agreement(r, agreements), group_langs[r.group_key]) for r in rows]
    frame = pd.DataFrame.from_records(records) if records else pd.DataFrame(columns=["row_id", "annotator"])
    frame.attrs["group_langs"] = {groups.index(key): group_langs[key] for key in groups}
    if frame.empty:
        frame.attrs["langs"] = langs
        return frame
    frame.insert(0, "group", [groups.index(key) for key in group_keys])
    # A table without the ranking metric at all (the paper's low-resource table has WR only) ranks by the other.
    other = next(m for m in METRIC_COLUMNS if m != metric)
    ranked_by = {g: metric if frame.loc[frame["group"] == g, f"avg_{metric}"].notna().any() else other
                 for g in range(len(groups))}
    rank = pd.concat([frame.loc[frame["group"] == g, f"avg_{m}"].rank(method="min", ascending=False)
                      for g, m in ranked_by.items()]).sort_index()
    frame.insert(1, "rank", rank.astype("Int64"))
    frame.insert(2, "ranked_by", frame["group"].map(ranked_by))
    frame.attrs["metric"] = metric
    frame = frame.sort_values(["group", "rank", "label", "row_id"], na_position="last", kind="stable")
    frame = frame.reset_index(drop=True)
    for column in ["iteration"] + [f"{lang}_n" for lang in all_langs]:
        frame[column] = frame[column].astype("Int64")
    cap_columns = sorted(c for c in frame.columns if c.startswith("cap_"))
    frame = frame[[c for c in frame.columns if not c.startswith("cap_") and c != "source"] + cap_columns + ["source"]]
    frame.attrs["langs"] = all_langs
    return frame


def frame_languages(frame: pd.DataFrame) -> list[str]:
    return list(frame.attrs.get("langs") or [m.group(1) for c in frame.columns if (m := _LANG_COLUMN.fullmatch(c))])


def value_columns(frame: pd.DataFrame) -> list[str]:
    """Columns where a higher number is better: per-language and average LC / WR, capability scores."""
    langs = frame_languages(frame)
    columns = [f"{lang}_{m}" for lang in langs for m in METRIC_COLUMNS] + [f"avg_{m}" for m in METRIC_COLUMNS]
    return [c for c in columns if c in frame.columns] + [c for c in frame.columns if c.startswith("cap_")]


def best_cells(frame: pd.DataFrame) -> pd.DataFrame:
    """True where a value is the best of its column within its judge group (ties all marked).

    A column with fewer than two values in a group marks nothing: there is nothing to be best against.
    """
    best = pd.DataFrame(False, index=frame.index, columns=value_columns(frame))
    for _, group in frame.groupby("group"):
        for column in best.columns:
            values = group[column].astype(float)
            if values.notna().sum() >= 2:
                best.loc[group.index, column] = values == values.max()
    return best


def write_leaderboard_csv(frame: pd.DataFrame, path) -> None:
    """The frame as CSV (4 decimals), written atomically; same rows in, same bytes out."""
    with atomic_open(path) as handle:
        frame.to_csv(handle, index=False, float_format="%.4f", lineterminator="\n")


# -- rendering -------------------------------------------------------------------------------------

def _cell(value: float, se: float, is_best: bool, is_not_estimable: bool = False) -> Text:
    if math.isnan(value):
        return Text("—†" if is_not_estimable else "—", style="dim")
    text = f"{value:.2f}" + (f"±{se:.2f}" if not math.isnan(se) else "") + ("*" if is_best else "")
    return Text(text, style="bold" if is_best else "")


def _judge_caption(first: pd.Series) -> str:
    judge = f"annotator: {first['annotator']}"
    if first["annotator_is_demo"]:
        if math.isnan(first["agreement_clear"]):
            judge += " (demo judge: mechanics only; agreement with GPT-4 Turbo not measured)"
        else:
            judge += (f" (demo judge: mechanics only; agreement with GPT-4 Turbo {100 * first['agreement_clear']:.1f}%"
                      f" on clear cases, {100 * first['agreement_all']:.1f}% on all)")
    elif not math.isnan(first["agreement_clear"]):
        judge += f" (agreement with GPT-4 Turbo {100 * first['agreement_clear']:.1f}% on clear cases)"
    return f"{judge} | reference outputs: {first['reference']}"


def render_leaderboard(frame: pd.DataFrame, *, metric: str = "lc") -> list[Table]:
    """One rich table per judge group; each row shows the ranking metric, then the other one.

    Cells read ``value±standard error``; ``*`` and bold mark the best of a column within the table.
    """
    return [wide for wide, _ in leaderboard_layouts(frame, metric=metric)]


def leaderboard_layouts(frame: pd.DataFrame, *, metric: str = "lc") -> list[tuple[Table, Callable]]:
    """Per judge group: the wide table, and ``narrow(width)``: one block per model (its rank, label and
    row id on a line of their own, its numbers in a table below) for a width the wide table does not fit."""
    check_metric(metric)
    langs = frame_languages(frame)
    best = best_cells(frame)
    n_groups = frame["group"].nunique() if not frame.empty else 0
    return [_group_layouts(frame, group_id, group, langs, best, metric, n_groups)
            for group_id, group in frame.groupby("group", sort=True)]


def _group_layouts(frame, group_id, group, langs, best, metric, n_groups) -> tuple[Table, Callable]:
    first = group.iloc[0]
    metric = first.get("ranked_by") or metric
    other = next(m for m in METRIC_COLUMNS if m != metric)
    langs = group_languages(frame, group_id)
    shown = langs  # the languages the table averages over, and only those: the caption names them
    caps = [c for c in frame.columns if c.startswith("cap_") and group[c].notna().any()]
    title = group_title(first) + (f" — table {group_id + 1} of {n_groups}" if n_groups > 1 else "")
    has_language = has_language_columns(group, shown)
    caption = "\n".join(group_caption(group, first, langs, shown, metric, has_language, n_groups))
    # Per model: (rank, label, row id, lines of (line name, cells)).
    models = []
    for index, row in group.iterrows():
        lines = []
        for m in (metric, other):
            cells = [_cell(row[f"{lang}_{m}"], row[f"{lang}_{m}_se"], bool(best.at[index, f"{lang}_{m}"]),
                           m == "lc" and bool(row.get(f"{lang}_lc_not_estimable")))
                     for lang in shown]
            cells.append(_cell(row[f"avg_{m}"], row[f"avg_{m}_se"], bool(best.at[index, f"avg_{m}"])))
            cells += ([_cell(row[c], math.nan, bool(best.at[index, c])) for c in caps] if m == metric
                      else [Text("") for _ in caps])
            lines.append((METRIC_NAMES[m], cells))
        if has_language:
            lines += _language_lines(row, shown, len(caps))
        rank = "" if pd.isna(row["rank"]) else str(row["rank"])
        models.append((rank, row["label"], row["row_id"], lines))
    value_headers = [*shown, "avg", *[c.removeprefix("cap_") for c in caps]]

    # min_width keeps the caption (judge, reference, ranking rule) readable under a narrow table.
    wide = Table(title=title, caption=caption, caption_justify="left", min_width=100)
    for name, justify in [("#", "right"), ("model / row id", "left"), ("", "left")]:
        wide.add_column(name, justify=justify, overflow="fold")
    for name in value_headers:
        wide.add_column(name, justify="right", no_wrap=True)
    for rank, label, row_id, lines in models:
        for i, (name, cells) in enumerate(lines):
            head = [rank, label] if i == 0 else ["", Text(row_id if row_id != label and i == 1 else "", style="dim")]
            wide.add_row(*head, name, *cells, end_section=i == len(lines) - 1)

    def narrow(width: int) -> Group:
        from harness.results.terminal import split_columns, stack_rows, word_lines

        blocks: list = [Text(title, style="bold italic", justify="center")]
        # One width per column across the models, so their small tables line up.
        widths = [max([len(name)] + [cells[i].cell_len for *_, lines in models for _, cells in lines])
                  for i, name in enumerate(value_headers)]
        for rank, label, row_id, lines in models:
            heading = word_lines(f"{rank}. " * bool(rank) + label + f" · {row_id}" * (row_id != label), width,
                                 style="bold")
            table = Table(show_edge=False, box=None, padding=(0, 1))
            table.add_column("", no_wrap=True, min_width=5)
            for name, column_width in zip(value_headers, widths):
                table.add_column(name, justify="right", no_wrap=True, min_width=column_width)
            for name, cells in lines:
                table.add_row(name, *cells)
            parts = split_columns(table, width, _measure_console(width)) or [stack_rows(table, width)]
            blocks += [*heading, *parts]
        blocks.append(Text(caption, style="dim"))
        return Group(*blocks)

    return wide, narrow


def _measure_console(width: int):
    from rich.console import Console

    return Console(width=width, file=io.StringIO())


def group_title(first: pd.Series) -> str:
    """A judge group's title: X-AlpacaEval for ours, the paper table for published rows."""
    if first["kind"] != "published":
        return "X-AlpacaEval"
    return ("Published" + (f": {first['published_table']}" if first["published_table"] else "")
            + " (the paper's numbers, not re-measured)")


def group_languages(frame: pd.DataFrame, group_id: int) -> list[str]:
    """The languages a judge group shows and averages over (a published table: the paper's own)."""
    return list(frame.attrs.get("group_langs", {}).get(group_id) or frame_languages(frame))


def group_caption(group, first, langs, shown, metric, has_language, n_groups) -> list[str]:
    """The caption lines under a judge group's table: judge and reference, ranking rule, footnotes."""
    asked = group.attrs.get("metric", metric)
    instead = f" (no row of this table has an {METRIC_NAMES[asked]})" if asked != metric else ""
    caption = [_judge_caption(first),
               f"ranked by average {METRIC_NAMES[metric]}{instead} over {', '.join(langs)}, within this table only · "
               "* best in column · ± standard error (of the average: languages taken as independent)"]
    unranked = [f"{row['label']} (no {METRIC_NAMES[metric]} for {row[f'avg_{metric}_missing']})"
                for _, row in group.iterrows() if pd.isna(row["rank"])]
    if unranked:
        caption.append("not ranked, the average needs every language: " + "; ".join(unranked))
    not_estimable = {f"{row['label']} {lang}": row.get(f"{lang}_lc_not_estimable") for _, row in group.iterrows()
                     for lang in shown if row.get(f"{lang}_lc_not_estimable")}
    if not_estimable:
        caption.append("† LC not estimable (no number, no rank, no delta): " + reasons_footnote(not_estimable))
    if has_language:
        caption.append("lang: % of outputs in the instruction's language (% of them mixing languages) · "
                       "gated: WR with outputs in another language counted as losses")
    if n_groups > 1:
        caption.append("rows of other judges, references or paper tables: other tables, not ranked against these")
    return caption


def has_language_columns(group: pd.DataFrame, langs: Sequence[str]) -> bool:
    columns = [f"{lang}_target" for lang in langs if f"{lang}_target" in group.columns]
    return bool(columns) and bool(group[columns].notna().any().any())


def _language_lines(row: pd.Series, langs: Sequence[str], n_caps: int) -> list[tuple[str, list[Text]]]:
    """Two lines under a row's metrics: "lang" (target-language rate, mixed rate) and "gated" (gated WR)."""
    def rate(lang: str) -> Text:
        target, mixed = row[f"{lang}_target"], row[f"{lang}_mixed"]
        if math.isnan(target):
            return Text("—", style="dim")
        return Text(f"{target:.1f}" + ("" if math.isnan(mixed) else f" ({mixed:.1f})"))

    def gated(lang: str) -> Text:
        return _cell(row[f"{lang}_gated_wr"], math.nan, False)

    blanks = [Text("") for _ in range(n_caps)]
    return [("lang", [rate(lang) for lang in [*langs, "avg"]] + blanks),
            ("gated", [gated(lang) for lang in [*langs, "avg"]] + blanks)]
