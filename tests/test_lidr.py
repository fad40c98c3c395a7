"""LIDR: pair construction on hand-built records, a tiny-model iteration, the annotate CLI, compare-baselines.

Budget: under 60 s on 2 cores (tiny random models, 4-6 new tokens; the comparison uses synthetic rows).
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from cli_helpers import run_cli
from results_fixtures import add_row

from xlpref.data import MINI_DIR, load_train_prompts
from xlpref.errors import InputError
from xlpref.lidr import (
    RECORD_KEY,
    LIDRPrompt,
    build_lidr_pairs,
    prompts_from_train_prompts,
    render_lidr_summary,
    translation_instruction,
    translation_requests,
)
from xlpref.models import build_tiny_model
from xlpref.registry import resolve

REPO = Path(__file__).resolve().parents[1]
PROMPTS_DIR = MINI_DIR / "train_prompts" / "mini"
PAIR_FIELDS = {"id", "lang", "prompt", "chosen", "rejected", "chosen_reward", "rejected_reward", "alpha", "annotator",
               "source_lang", "is_translation_task"}
DROPS = ("dropped_empty_answer", "dropped_empty_translation", "dropped_identical", "dropped_no_preference",
         "dropped_duplicate")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def assert_counts_add_up(summary: dict) -> None:
    for lang, row in summary.items():
        if not lang.startswith("_"):
            assert row["pairs"] + sum(row[d] for d in DROPS) == row["attempted"], lang


# -- pairs from hand-built answers and translations ---------------------------------------------------

CAT = LIDRPrompt("a", {"en": "Describe a cat.", "es": "Describe un gato.", "de": "Beschreibe eine Katze."})
THANKS = LIDRPrompt("t", {"en": "Translate 'thank you' into German.", "es": "Traduce 'thank you' al alemán.",
                          "de": "Übersetze 'thank you' ins Deutsche."}, is_translation_task=True)
ANSWERS = {("en", "a"): "A cat is a small furry animal.", ("es", "a"): "Un gato.", ("de", "a"): "Katze.",
           ("en", "t"): "Danke.", ("es", "t"): "Gracias.", ("de", "t"): "Danke schön."}
TRANSLATIONS = {("en", "es", "a"): "Un gato es un animal pequeño y peludo.",
                ("en", "de", "a"): "Eine Katze ist ein kleines pelziges Tier.",
                ("es", "en", "a"): "A cat.", ("de", "en", "a"): "Cat.",
                ("es", "en", "t"): "Thanks.", ("de", "en", "t"): "Thank you very much."}


def test_pairs_prefer_english_and_translation_tasks_keep_the_english_answer():
    result = build_lidr_pairs([CAT, THANKS], ["en", "es", "de"], ANSWERS, TRANSLATIONS)
    got = [(p["lang"], p["id"], p["source_lang"], p["prompt"], p["chosen"], p["rejected"]) for p in result.pairs]
    assert got == [
        ("en", "a", "es", "Describe a cat.", "A cat is a small furry animal.", "A cat."),
        ("en", "a", "de", "Describe a cat.", "A cat is a small furry animal.", "Cat."),
        ("en", "t", "es", "Translate 'thank you' into German.", "Danke.", "Thanks."),
        ("en", "t", "de", "Translate 'thank you' into German.", "Danke.", "Thank you very much."),
        ("es", "a", "en", "Describe un gato.", "Un gato es un animal pequeño y peludo.", "Un gato."),
        ("es", "t", "en", "Traduce 'thank you' al alemán.", "Danke.", "Gracias."),   # untranslated English answer
        ("de", "a", "en", "Beschreibe eine Katze.", "Eine Katze ist ein kleines pelziges Tier.", "Katze."),
        ("de", "t", "en", "Übersetze 'thank you' ins Deutsche.", "Danke.", "Danke schön."),
    ]
    for pair in result.pairs:  # the PAIRS.jsonl contract of `xlpref pairs`, with LIDR's nulls
        assert set(pair) == PAIR_FIELDS
        assert (pair["chosen_reward"], pair["rejected_reward"], pair["alpha"], pair["annotator"]) == (
            None, None, None, "lidr")
        assert pair["is_translation_task"] == (pair["id"] == "t")
    assert result.summary["en"] == {"attempted": 4, "pairs": 4, "translation_tasks": 2, **dict.fromkeys(DROPS, 0),
                                    "mean_len_chosen": (30 * 2 + 6 * 2) / 4, "mean_len_rejected": (6 + 4 + 7 + 20) / 4}
    assert result.summary["es"]["translation_tasks"] == 1 and result.summary["de"]["pairs"] == 2
    # Exactly the translations these pairs need are requested: none for the translation task into L.
    requests = translation_requests([CAT, THANKS], ["es", "de"], ANSWERS)
    assert {(r.meta["source_lang"], r.lang, r.meta["source_id"]) for r in requests} == set(TRANSLATIONS)
    assert len({(r.lang, r.id) for r in requests}) == len(requests)


def test_failed_translations_and_empty_answers_drop_pairs_and_are_counted():
    x = LIDRPrompt("x", {"en": "Greet me.", "es": "Salúdame.", "de": "Begrüße mich.", "fr": "Salue-moi."})
    y = LIDRPrompt("y", {"en": "Agree.", "es": "Acepta.", "de": "Stimme zu.", "fr": "Accepte."})
    answers = {("en", "x"): "Hello there.", ("es", "x"): "Hola.", ("de", "x"): "  ", ("fr", "x"): "Bonjour.",
               ("en", "y"): "Yes.", ("es", "y"): "Sí.", ("de", "y"): "Ja.", ("fr", "y"): "Oui."}
    translations = {
        ("en", "es", "x"): "", ("es", "en", "x"): "Hola.",                  # empty / untranslated
        ("en", "fr", "x"): " Hello there. ", ("fr", "en", "x"): "Hello there.",  # untranslated / equals chosen
        ("en", "es", "y"): "Sí, claro.", ("es", "en", "y"): "Yes indeed.",
        ("en", "de", "y"): "Ja.", ("de", "en", "y"): "Yes indeed.",          # de: chosen == rejected; en: duplicate
        ("en", "fr", "y"): "Oui, bien sûr.", ("fr", "en", "y"): "Indeed yes.",
    }
    result = build_lidr_pairs([x, y], ["en", "es", "de", "fr"], answers, translations)
    assert [(p["lang"], p["id"], p["source_lang"], p["rejected"]) for p in result.pairs] == [
        ("en", "y", "es", "Yes indeed."), ("en", "y", "fr", "Indeed yes."), ("es", "y", "en", "Sí."),
        ("fr", "y", "en", "Oui.")]
    drops = {lang: {d: row[d] for d in DROPS if row[d]} for lang, row in result.summary.items()}
    assert drops == {
        "en": {"dropped_identical": 1, "dropped_empty_answer": 1, "dropped_no_preference": 1, "dropped_duplicate": 1},
        "es": {"dropped_empty_translation": 1},
        "de": {"dropped_empty_answer": 1, "dropped_no_preference": 1},
        "fr": {"dropped_identical": 1},
    }
    assert [result.summary[lang]["attempted"] for lang in ("en", "es", "de", "fr")] == [6, 2, 2, 2]
    assert_counts_add_up(result.summary)
    assert result.summary["de"]["mean_len_chosen"] is None
    table = render_lidr_summary(result.summary)
    assert [c.header for c in table.columns] == ["", "en", "es", "de", "fr"] and table.row_count == 10


def test_bad_inputs_to_pair_construction():
    with pytest.raises(InputError, match="no language besides English"):
        build_lidr_pairs([CAT], ["en"], ANSWERS, TRANSLATIONS)
    with pytest.raises(InputError, match=r"no answer for \('de', 'a'\)"):
        build_lidr_pairs([CAT], ["en", "es", "de"], {k: v for k, v in ANSWERS.items() if k != ("de", "a")},
                         TRANSLATIONS)
    with pytest.raises(InputError, match=r"no translation for \('es', 'en', 'a'\)"):
        build_lidr_pairs([CAT], ["en", "es"], ANSWERS, {})
    # Without English among the languages: target pairs only, and no translation into English is needed.
    result = build_lidr_pairs([CAT], ["es"], ANSWERS, {("en", "es", "a"): TRANSLATIONS[("en", "es", "a")]})
    assert [p["lang"] for p in result.pairs] == ["es"] and set(result.summary) == {"es"}
    assert [r.lang for r in translation_requests([CAT], ["es"], ANSWERS, has_english=False)] == ["es"]


def test_translation_instruction_names_the_target_language():
    assert translation_instruction("Hola.", "en") == \
        "Translate the following text into English. Output only the translation.\n\nHola."
    assert translation_instruction("Hi.", "de").startswith("Translate the following text into German.")


# -- a tiny model through the loop's interface -------------------------------------------------------

def test_tiny_model_lidr_iteration_through_the_registry_is_resumable(tmp_path, record_store):
    by_lang = load_train_prompts(PROMPTS_DIR, ["en", "es", "de"])
    prompts = {lang: [rows[0], rows[-1]] for lang, rows in by_lang.items()}  # the last: a translation task
    assert [p.is_translation_task for p in prompts["es"]] == [False, True]
    policy = build_tiny_model("tiny-random-gemma3", seed=0)
    store = record_store
    annotator = resolve("annotator", "lidr")(seed=43, console=None, max_new_tokens=6)
    assert annotator.needs_samples is False and annotator.settings["max_new_tokens"] == 6

    def annotate():  # exactly the loop's call
        return annotator.annotate(samples=[], policy=policy, reward_policy="unused", reference="unused",
                                  prompts=prompts, languages=["en", "es", "de"], store=store, stage_dir="iter_0",
                                  progress=False)

    result = annotate()
    summary = result.summary
    assert [summary[lang]["attempted"] for lang in ("en", "es", "de")] == [4, 2, 2]
    assert [summary[lang]["translation_tasks"] for lang in ("en", "es", "de")] == [2, 1, 1]
    assert_counts_add_up(summary)
    answers = {(r["lang"], r["id"]): r for r in store.record_log("iter_0/lidr_answers", key=RECORD_KEY).records}
    translations = store.record_log("iter_0/lidr_translations", key=RECORD_KEY).records
    assert len(answers) == 6 and all(r["temperature"] == 0 and r["max_new_tokens"] == 6 for r in answers.values())
    assert (tmp_path / "run" / "iter_0" / "lidr_translations.jsonl").exists()
    by_source = {(r["source_lang"], r["lang"], r["source_id"]): r["response"] for r in translations}
    assert len(translations) == len(translation_requests(prompts_from_train_prompts(prompts, ["en", "es", "de"]),
                                                         ["es", "de"], {k: r["response"] for k, r in answers.items()}))
    assert summary["_tokens"] == sum(r["n_response_tokens"] for r in [*answers.values(), *translations])
    for pair in result.pairs:
        assert set(pair) == PAIR_FIELDS and pair["chosen"].strip() and pair["rejected"].strip()
        prompt = next(p for p in prompts[pair["lang"]] if p.instruction_id == pair["id"])
        assert pair["prompt"] == prompt.instruction
        english = answers[("en", pair["id"])]["response"]
        if pair["lang"] == "en":
            assert (pair["chosen"], pair["rejected"]) == (english, by_source[(pair["source_lang"], "en", pair["id"])])
        elif pair["is_translation_task"]:
            assert (pair["chosen"], pair["rejected"]) == (english, answers[(pair["lang"], pair["id"])]["response"])
        else:
            assert pair["chosen"] == by_source[("en", pair["lang"], pair["id"])]
    # A crash during the translations: the partial log is resumed and the pairs are the same.
    final = tmp_path / "run" / "iter_0" / "lidr_translations.jsonl"
    lines = final.read_text(encoding="utf-8").splitlines(keepends=True)
    final.unlink()
    (final.parent / "lidr_translations.partial.jsonl").write_text("".join(lines[: len(lines) // 2]), encoding="utf-8")
    assert annotate().pairs == result.pairs
    assert annotate().pairs == result.pairs  # finished logs: read back


# -- the annotate command --------------------------------------------------------------------------

def test_annotate_cli_round_trip_for_both_annotators(tmp_path, capsys):
    out = tmp_path / "lidr_pairs.jsonl"
    args = ["annotate", "--annotator", "lidr", "--policy", "tiny-random-gemma3", "--prompts", PROMPTS_DIR,
            "--langs", "en,es", "--limit", "2", "--max-new-tokens", "4", "-o", out]
    code, stdout, err = run_cli(args, capsys)
    assert code == 0, err
    pairs = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    summary = json.loads((tmp_path / "lidr_pairs.summary.json").read_text(encoding="utf-8"))
    assert summary["en"]["attempted"] == 2 and summary["es"]["attempted"] == 2
    assert len(pairs) == summary["en"]["pairs"] + summary["es"]["pairs"]
    assert all(p["annotator"] == "lidr" and p["chosen_reward"] is None for p in pairs)
    assert "LIDR pairs" in stdout and (tmp_path / "lidr_pairs.work" / "lidr_answers.jsonl").exists()
    before = out.read_bytes()
    assert run_cli(args, capsys)[0] == 0 and out.read_bytes() == before  # rerun: read back from the work folder

    samples = tmp_path / "samples.jsonl"
    samples.write_text("".join(json.dumps({"lang": lang, "id": 1, "sample_index": k, "prompt": prompt,
                                           "prompt_en": "Write a poem.", "response": response}) + "\n"
                               for lang, prompt in (("en", "Write a poem."), ("es", "Escribe un poema."))
                               for k, response in enumerate(("The sea.", "Blue sky and calm sea today."))),
                       encoding="utf-8")
    out = tmp_path / "ir_pairs.jsonl"
    code, stdout, err = run_cli(["annotate", "--annotator", "implicit-reward", "--samples", samples, "--policy",
                                 "tiny-random-gemma3", "--reference", "tiny-random-llama", "-o", out], capsys)
    assert code == 0, err
    pairs = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [p["lang"] for p in pairs] == ["en", "es"] and all(isinstance(p["chosen_reward"], float) for p in pairs)
    assert "preference pairs" in stdout


@pytest.mark.parametrize("extra, message", [
    (["--annotator", "lidr", "--langs", "en,es"], "needs --prompts"),
    (["--annotator", "lidr", "--prompts", PROMPTS_DIR, "--langs", "en"], "no language besides English"),
    (["--annotator", "lidr", "--prompts", PROMPTS_DIR, "--langs", "en,xx"], "unknown language code 'xx'"),
    (["--annotator", "lidr", "--prompts", PROMPTS_DIR, "--langs", "en,es", "--samples", "s.jsonl"],
     "--samples belong to annotator 'implicit-reward'"),
    (["--annotator", "implicit-reward", "--samples", "missing.jsonl"], "needs --reference"),
    (["--annotator", "judge-by-vibes", "--prompts", PROMPTS_DIR], "expected one of ['implicit-reward', 'lidr']"),
])
def test_annotate_bad_input_exits_2(tmp_path, capsys, extra, message):
    code, _, err = run_cli(["annotate", "--policy", "tiny-random-gemma3", *extra, "-o", tmp_path / "p.jsonl"], capsys)
    assert code == 2 and message in err and err.count("\n") == 1


# -- compare-baselines on synthetic results rows -------------------------------------------------------

def write_configs(tmp_path: Path, **icr_overrides: str) -> list[Path]:
    """ICR, LIDR and English-only configs extending the shipped ones, each with its run folder in tmp_path."""
    paths = []
    for name, base in (("icr", "demo.yaml"), ("lidr", "baselines/lidr.yaml"),
                       ("english", "baselines/english-only.yaml")):
        path = tmp_path / f"{name}.yaml"
        extra = "".join(f"{k}: {v}\n" for k, v in icr_overrides.items()) if name == "lidr" else ""
        path.write_text(f"extends: {REPO / 'configs' / base}\nrun_dir: {tmp_path / 'runs' / name}\n{extra}",
                        encoding="utf-8")
        paths.append(path)
    return paths


def test_compare_baselines_table_from_synthetic_rows(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)  # the shipped configs' data paths are relative to the repository
    results = tmp_path / "results"
    shutil.copytree(REPO / "results" / "published", results / "published")
    icr, lidr, english = write_configs(tmp_path)
    langs = ("en", "es", "de")
    # Per-instruction preferences (1 = the model wins): ICR 0.8, LIDR 0.3 everywhere, English-only 0.8 on average.
    for run, folder, prefs, wr, lc in (("demo", "icr", [0.8] * 20, 80.0, 78.0),
                                       ("demo-lidr", "lidr", [0.3] * 20, 30.0, 29.0),
                                       ("demo-english-only", "english", [0.75, 0.85] * 10, 80.0, 75.0)):
        add_row(tmp_path / "runs" / folder / "results", f"{run}-iter1", {lang: (wr, lc) for lang in langs}, run=run,
                iteration=1, annotations={lang: prefs for lang in langs})
    code, out, err = run_cli(["compare-baselines", "--icr", icr, "--baseline", lidr, "--baseline", english,
                              "--iterations", "1", "--no-run", "--results-dir", results, "--n-boot", "200"], capsys)
    assert code == 0, err
    folder = results / "comparisons" / "demo-vs-baselines"
    comparison = json.loads((folder / "comparison.json").read_text(encoding="utf-8"))
    assert comparison["icr"] == "demo-iter1"
    assert comparison["baselines"] == ["demo-lidr-iter1", "demo-english-only-iter1"]
    assert {"paper-lidr-best", "paper-icr-iter0", "paper-icr-iter2"} <= set(comparison["published"])
    lidr_rows = {row["lang"]: row for row in comparison["comparisons"]["demo-lidr-iter1"]["rows"]}
    assert list(lidr_rows) == ["en", "es", "de", "avg"]
    for row in lidr_rows.values():  # ICR minus LIDR: 80 - 30 points, every replicate the same
        assert row["delta_wr"] == pytest.approx(50.0) and row["ci_low"] == pytest.approx(50.0)
        assert row["is_significant"] is True and row["delta_lc"] == pytest.approx(49.0)
    english_rows = {row["lang"]: row for row in comparison["comparisons"]["demo-english-only-iter1"]["rows"]}
    for row in english_rows.values():  # same mean, paired noise: an interval around 0, not significant
        assert row["delta_wr"] == pytest.approx(0.0) and row["ci_low"] < 0 < row["ci_high"]
        assert row["is_significant"] is False and row["n"] == (20 if row["lang"] != "avg" else 60)
    with open(folder / "leaderboard.csv", encoding="utf-8", newline="") as handle:
        lines = list(csv.DictReader(handle))
    ours = [line["row_id"] for line in lines if line["kind"] == "ours"]
    assert ours == ["demo-iter1", "demo-english-only-iter1", "demo-lidr-iter1"]  # ranked by average LC
    assert {line["kind"] for line in lines if line["row_id"].startswith("paper-")} == {"published"}
    assert (folder / "icr-vs-demo-lidr-iter1.csv").exists()
    assert "Published" in out and "B minus A (A = demo-lidr-iter1, B = demo-iter1)" in out


def test_compare_baselines_refuses_a_different_setup(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    icr, lidr, _ = write_configs(tmp_path, seed="7")
    code, _, err = run_cli(["compare-baselines", "--icr", icr, "--baseline", lidr, "--no-run"], capsys)
    assert code == 2 and "seed is 7 but the ICR config has 42" in err and "lidr.yaml" in err
    code, _, err = run_cli(["compare-baselines", "--icr", icr, "--baseline", icr, "--no-run"], capsys)
    assert code == 2 and "shares its name or run directory" in err
    icr, lidr, _ = write_configs(tmp_path)
    code, _, err = run_cli(["compare-baselines", "--icr", icr, "--baseline", lidr, "--no-run"], capsys)
    assert code == 2 and "has no evaluated iteration 1" in err
