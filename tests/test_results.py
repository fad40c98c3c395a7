"""The results tree: writing and reading rows, safe row ids, run iterations, the paper's published rows."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from harness.results.rows import (read_judge_agreement, read_row, read_rows, record_run_iteration, resolve_row,
                             write_capabilities, write_row)
from results_fixtures import JUDGE, REFERENCE, add_row, synthetic_annotations, synthetic_metrics
from xlpref.data import default_data_dir
from xlpref.errors import InputError
from xlpref.jsonio import read_json, write_json_atomic

REPO = Path(__file__).resolve().parent.parent


def paper_json() -> Path:
    path = default_data_dir() / "paper" / "icr_published_results.json"
    if not path.exists():
        pytest.skip(f"the paper's published numbers not found at {path} (set XLPREF_DATA_DIR)")
    return path


def test_row_round_trip_keeps_files_and_names_the_judge(tmp_path):
    folder = add_row(tmp_path, "demo-iter0", {"en": (12.5, 10.0), "es": (8.0, 7.5)},
                     annotations={"en": [0.1, 0.9], "es": [0.5, 0.5]})
    assert folder == (tmp_path / "demo-iter0").resolve()
    row = read_row(folder)
    assert row.languages == ["en", "es"]
    assert row.metrics["en"]["win_rate"] == 12.5 and row.metrics["es"]["length_controlled_winrate"] == 7.5
    assert row.judge == (JUDGE, REFERENCE)
    assert [a["preference"] for a in row.annotations("en")] == [1.1, 1.9]
    assert not (folder / "en" / "model_outputs.json").exists()  # None means "not stored"
    assert read_json(folder / "es" / "metrics.json")["annotator"] == JUDGE


def test_rewriting_a_row_drops_languages_it_no_longer_has(tmp_path):
    add_row(tmp_path, "r", {"en": (10, 10), "es": (10, 10)})
    add_row(tmp_path, "r", {"en": (20, 20)})
    assert read_row(tmp_path / "r").languages == ["en"]
    assert [p.name for p in tmp_path.iterdir()] == ["r"]  # no staging or backup folder left behind


@pytest.mark.parametrize("row_id", ["../evil", "a/b", ".hidden", "", "..", "/abs", "published", "sp ace"])
def test_unsafe_row_ids_are_refused(tmp_path, row_id):
    results = tmp_path / "results"
    with pytest.raises(InputError, match="row id|row_id|unsafe|path"):
        add_row(results, row_id, {"en": (1, 1)})
    assert not (tmp_path / "evil").exists() and not list(tmp_path.glob("**/row.json"))
    if row_id:
        with pytest.raises(InputError):
            resolve_row(row_id, results)


def test_metrics_from_another_judge_are_refused(tmp_path):
    meta = {"row_id": "x", "model": "m", "kind": "ours", "annotator": JUDGE, "reference": REFERENCE, "source": "t"}
    other = synthetic_metrics(10, 10, annotator="another-judge")
    with pytest.raises(InputError, match="differs from the row's annotator"):
        write_row(tmp_path, meta, {"en": {"metrics": other}})
    with pytest.raises(InputError, match="not a number"):
        write_row(tmp_path, meta, {"en": {"metrics": {"win_rate": "12"}}})
    with pytest.raises(InputError, match="unknown language"):
        write_row(tmp_path, meta, {"xx": {"metrics": synthetic_metrics(1, 1)}})


def test_read_rows_finds_published_rows_and_refuses_duplicate_ids(tmp_path):
    add_row(tmp_path, "ours-1", {"en": (1, 1)})
    add_row(tmp_path, "paper-x", {"en": (2, 2)}, kind="published", run=None, iteration=None)
    rows = read_rows(tmp_path)
    assert [(r.row_id, r.is_published) for r in rows] == [("ours-1", False), ("paper-x", True)]
    assert [r.row_id for r in read_rows(tmp_path, include_published=False)] == ["ours-1"]
    assert resolve_row("paper-x", tmp_path).is_published
    add_row(tmp_path, "paper-x", {"en": (2, 2)})  # the same id among our rows
    with pytest.raises(InputError, match="appears twice"):
        read_rows(tmp_path)


def test_record_run_iteration_copies_the_evaluation(tmp_path):
    eval_dir = tmp_path / "run" / "eval" / "iter_1"
    for lang in ("en", "de"):
        write_json_atomic(eval_dir / lang / "metrics.json", synthetic_metrics(30.0, 25.0))
        write_json_atomic(eval_dir / lang / "annotations.json", synthetic_annotations([0.2, 0.4]))
        write_json_atomic(eval_dir / lang / "model_outputs.json", [{"instruction": "q", "output": "a", "id": 1}])
    meta = {"model": "runs/demo/iter_0/model", "annotator_is_demo": True, "source": "xlpref run"}
    per_lang = {lang: eval_dir / lang for lang in ("en", "de")}
    folder = record_run_iteration(tmp_path / "results", "demo", 1, per_lang, meta)
    row = read_row(folder)
    assert (row.row_id, row.run, row.iteration, row.kind) == ("demo-iter1", "demo", 1, "ours")
    assert row.judge == (JUDGE, REFERENCE) and row.annotator_is_demo  # judge taken from the metrics
    assert read_json(folder / "de" / "annotations.json") == read_json(eval_dir / "de" / "annotations.json")
    assert (folder / "en" / "model_outputs.json").exists()


def test_capabilities_and_judge_agreement(tmp_path):
    folder = add_row(tmp_path, "r", {"en": (1, 1)})
    write_capabilities(folder, {"arc_multilingual": 0.41, "hellaswag": 0.5})
    assert read_row(folder).capabilities == {"arc_multilingual": 0.41, "hellaswag": 0.5}
    with pytest.raises(InputError, match="not a score"):
        write_capabilities(folder, {"mmlu": math.nan})
    agreement = {"agreement_clear": 0.7, "agreement_all": 0.6}
    write_json_atomic(tmp_path / "annotators" / JUDGE / "agreement.json", agreement)
    assert read_judge_agreement(JUDGE, tmp_path / "annotators")["agreement_clear"] == 0.7
    assert read_judge_agreement("../x", tmp_path / "annotators") is None
    assert read_judge_agreement("not-measured", tmp_path / "annotators") is None


def test_import_published_writes_the_papers_numbers_with_their_source(tmp_path):
    from harness.results.published_rows import PUBLISHED_ANNOTATOR, import_published

    paper = read_json(paper_json())
    written = import_published(paper_json(), tmp_path)
    rows = {r.row_id: r for r in read_rows(tmp_path)}
    assert len(written) == len(rows) == len(paper["table2"]) + 3 + 3  # table 2, reward ablation, table 5
    assert all(r.is_published and r.annotator == PUBLISHED_ANNOTATOR for r in rows.values())
    assert all(r.reference == REFERENCE for r in rows.values())
    assert all(paper["source"] in r.source for r in rows.values())
    icr2 = rows["paper-icr-iter2"]
    assert icr2.metrics["de"]["win_rate"] == paper["table2"]["ICR iteration 2"]["de"]["win_rate"]
    assert rows["paper-lidr-best"].metrics["ru"]["length_controlled_winrate"] == 12.68
    assert "length_controlled_winrate" not in rows["paper-icr-lowres-iter2"].metrics["sw"]
    # The paper's own averages agree with the mean of its per-language numbers (to its rounding).
    for row_id in ("paper-icr-iter0", "paper-icr-iter1", "paper-icr-iter2"):
        row = rows[row_id]
        for key, published in row.meta["published_average"].items():
            mean = sum(m[key] for m in row.metrics.values()) / len(row.metrics)
            assert abs(mean - published) < 0.006, (row_id, key, mean, published)
    # A stale published row disappears on re-import.
    add_row(tmp_path, "paper-old", {"en": (1, 1)}, kind="published")
    import_published(paper_json(), tmp_path)
    assert not (tmp_path / "published" / "paper-old").exists()


def test_committed_published_rows_are_regenerated_from_the_paper(tmp_path):
    from harness.results.published_rows import import_published

    import_published(paper_json(), tmp_path)
    committed, fresh = REPO / "results" / "published", tmp_path / "published"
    assert sorted(p.relative_to(committed) for p in committed.rglob("*.json")) == \
        sorted(p.relative_to(fresh) for p in fresh.rglob("*.json"))
    for path in fresh.rglob("*.json"):
        assert path.read_bytes() == (committed / path.relative_to(fresh)).read_bytes(), path
