"""The static leaderboard site: built from the results, then read in headless Chromium (sort, filter,
row page, search, escaping, load and filter time at 805 instructions x 5 languages).

The browser tests need the system's Chromium and chromedriver (`apt-get install chromium
chromium-driver`; `.ci/run` installs them); without them they are skipped, saying so. Nothing is
downloaded: the driver is given by path (harness/results/browser.py).
"""

from __future__ import annotations

import csv
import json
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_helpers import run_cli
from results_fixtures import REFERENCE, add_row

from harness.results.browser import chromium_paths
from harness.results.rows import write_row

LANGS = ["en", "es", "de", "fr", "ru"]
N_INSTRUCTIONS = 805
INJECTED = ('<script>window.__injected = 1</script><img src="x" onerror="window.__injected = 2">'
            '<b>bold?</b> </script><!-- & "quotes"')
NEEDLE = "zanzibarquokka"  # a word only one output holds


def big_row(results: Path, row_id: str, *, seed: int) -> None:
    """805 x 5 annotated outputs, of varied length; one carries ``NEEDLE``, one carries ``INJECTED``."""
    rng = random.Random(seed)
    per_lang = {}
    for lang in LANGS:
        annotations = []
        for i in range(1, N_INSTRUCTIONS + 1):
            words = " ".join(rng.choice(["alpha", "beta", "gamma", "delta", "omega"]) for _ in range(rng.randint(20, 120)))
            output = f"{lang} answer {i}: {words}"
            if lang == "es" and i == 17:
                output += f" {NEEDLE}"
            if lang == "de" and i == 3:
                output = INJECTED
            annotations.append({"id": i, "instruction": f"{lang} instruction {i}", "output_1": f"reference {words[:200]}",
                                "output_2": output, "generator_1": REFERENCE, "generator_2": row_id,
                                "preference": 1.0 + rng.random(), "is_switched_outputs": rng.random() < 0.5})
        wins = sum(a["preference"] > 1.5 for a in annotations)
        metrics = {"win_rate": 100 * wins / N_INSTRUCTIONS, "standard_error": 1.7, "length_controlled_winrate": 40.0 + seed,
                   "lc_standard_error": 1.1, "n_total": N_INSTRUCTIONS, "annotator": "demo-judge", "reference": REFERENCE}
        per_lang[lang] = {"metrics": metrics, "annotations": annotations, "model_outputs": None}
    write_row(results, {"row_id": row_id, "model": f"model-{row_id}", "run": "big", "iteration": seed, "kind": "ours",
                        "annotator": "demo-judge", "annotator_is_demo": True, "reference": REFERENCE,
                        "label": f"big iteration {seed}", "source": "tests/test_site.py"}, per_lang)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("site")
    results = root / "results"
    big_row(results, "big-iter0", seed=0)
    big_row(results, "big-iter1", seed=1)
    add_row(results, "paper-row", {"en": (30.0, 20.0), "es": (25.0, 18.0)}, kind="published", run=None,
            iteration=None, annotator="gpt4 (published)", is_demo=False, se=None, label="A published row")
    from harness.cli import main

    main(["leaderboard", "--results-dir", str(results), "--html", str(root / "site"), "--width", "120"])
    return root / "site"


def test_the_site_is_written_with_one_page_per_row_of_ours_and_no_outside_reference(site):
    assert (site / "index.html").is_file() and (site / "assets" / "site.js").is_file()
    assert sorted(p.name for p in (site / "rows").iterdir()) == ["big-iter0.html", "big-iter1.html"]
    assert sorted(p.name for p in (site / "plots").iterdir()) == ["big.lc.png", "big.wr.png"]
    for page in [site / "index.html", *(site / "rows").iterdir(), site / "assets" / "site.js", site / "assets" / "site.css"]:
        text = page.read_text(encoding="utf-8")
        assert "http://" not in text and "https://" not in text and "@import" not in text and "url(" not in text
    html = (site / "rows" / "big-iter0.html").read_text(encoding="utf-8")
    data = html[html.index('type="application/json">'):html.index("</script>")]
    assert "<" not in data.split(">", 1)[1]  # the injected output cannot close the data block


def test_the_site_is_regenerated_byte_for_byte(site, tmp_path, capsys):
    results = site.parent / "results"
    code, _, err = run_cli(["leaderboard", "--results-dir", results, "--html", tmp_path / "again",
                            "--csv", tmp_path / "lb.csv"], capsys)
    assert code == 0, err
    for page in ["index.html", "rows/big-iter0.html", "assets/site.js"]:
        assert (tmp_path / "again" / page).read_bytes() == (site / page).read_bytes(), page


# -- in the browser --------------------------------------------------------------------------------

# In CI (.ci/run installs Chromium) a missing browser is a failure, not a skip.
needs_chromium = pytest.mark.skipif(chromium_paths() is None and not os.environ.get("CI"), reason="no chromium + chromedriver on PATH (apt-get "
                                    "install chromium chromium-driver; .ci/run installs them)")


@pytest.fixture(scope="module")
def browser():
    if chromium_paths() is None:
        pytest.fail("CI without chromium + chromedriver on PATH; .ci/run installs them (apt-get install chromium "
                    "chromium-driver)")
    from harness.results.browser import chromium

    with chromium(width=1400, height=1000) as driver:
        yield driver


def load(driver, url: str) -> float:
    """Open ``url``, wait until the page is built; returns its build time in ms (navigation to ready)."""
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    WebDriverWait(driver, 30).until(lambda d: d.find_element("tag name", "body").get_attribute("data-ready") == "true")
    return float(driver.find_element("tag name", "body").get_attribute("data-ready-ms"))


def leaderboard_csv(site: Path) -> dict[str, dict]:
    with (site.parent / "results" / "leaderboard.csv").open() as handle:
        return {record["row_id"]: record for record in csv.DictReader(handle)}


@needs_chromium
def test_index_numbers_in_the_dom_match_leaderboard_csv(site, browser):
    load(browser, (site / "index.html").as_uri())
    by_id = leaderboard_csv(site)
    cells = browser.find_elements("css selector", "td.num[data-key]")
    checked = 0
    for cell in cells:
        row_id = cell.find_element("xpath", "..").get_attribute("data-row-id")
        key = cell.get_attribute("data-key")
        expected = by_id[row_id].get(key, "")
        shown = cell.find_element("css selector", ".value").text.removesuffix("*")
        assert shown == (f"{float(expected):.2f}" if expected else "—"), (row_id, key)
        checked += bool(expected)
    assert checked >= 2 * 2 * (len(LANGS) + 1)  # both rows, LC and WR, every language and the average
    tables = browser.find_elements("css selector", "section.group h2")
    assert [t.text for t in tables][-1].startswith("Published")  # published rows in their own table, last


@needs_chromium
def test_sorting_a_column_and_filtering_a_language(site, browser):
    from selenium.webdriver.support.ui import Select

    load(browser, (site / "index.html").as_uri())
    table = browser.find_element("css selector", 'table[data-group="0"]')

    def order():
        return [tr.get_attribute("data-row-id") for tr in table.find_elements("css selector", "tbody tr")]

    by_id = leaderboard_csv(site)
    table.find_element("css selector", 'th[data-key="es_wr"]').click()
    descending = sorted(order(), key=lambda r: -float(by_id[r]["es_wr"]))
    assert order() == descending
    table.find_element("css selector", 'th[data-key="es_wr"]').click()
    assert order() == descending[::-1]
    Select(browser.find_element("id", "lang-filter")).select_by_value("de")
    assert not table.find_element("css selector", 'th[data-key="de_lc"]').get_attribute("hidden")
    assert table.find_element("css selector", 'th[data-key="en_lc"]').get_attribute("hidden")
    assert not table.find_element("css selector", 'th[data-key="avg_lc"]').get_attribute("hidden")
    published = browser.find_elements("css selector", "section.group.published")[0]
    assert published.get_attribute("hidden")  # the published table has no de


@needs_chromium
def test_row_page_opens_searches_filters_and_reports_its_speed(site, browser, record_property):
    from selenium.webdriver.support.ui import Select

    load(browser, (site / "index.html").as_uri())
    browser.find_element("link text", "big iteration 1").click()
    load_ms = load(browser, browser.current_url)
    assert browser.current_url.endswith("rows/big-iter1.html")
    total = N_INSTRUCTIONS * len(LANGS)
    assert browser.find_element("id", "count").text.startswith(f"{total} of {total}")
    # Filter time: the handler plus the layout it causes, timed inside the page.
    filter_ms = browser.execute_script("""
        const search = document.getElementById('search');
        const start = performance.now();
        search.value = arguments[0];
        search.dispatchEvent(new Event('input'));
        document.body.offsetHeight;
        return performance.now() - start;""", NEEDLE)
    assert browser.find_element("id", "count").text.startswith(f"1 of {total}")
    hit = browser.find_element("css selector", "article.item")
    assert hit.get_attribute("data-lang") == "es" and hit.get_attribute("data-id") == "17"
    browser.execute_script("const s = document.getElementById('search'); s.value = '';"
                           "s.dispatchEvent(new Event('input'));")
    Select(browser.find_element("id", "lang-filter")).select_by_value("fr")
    Select(browser.find_element("id", "outcome-filter")).select_by_value("win")
    items = json.loads(browser.find_element("id", "data").get_attribute("textContent"))["items"]
    wins_fr = [i for i in items if i["lang"] == "fr" and i["preference"] > 1.5]
    assert browser.find_element("id", "count").text.startswith(f"{len(wins_fr)} of {total}")
    shown = browser.find_elements("css selector", "article.item")
    assert shown and all(a.get_attribute("data-lang") == "fr" and "win" in a.get_attribute("class") for a in shown)
    browser.find_element("id", "min-length").send_keys("700")
    long_wins = [i for i in wins_fr if i["len_output"] >= 700]
    assert browser.find_element("id", "count").text.startswith(f"{len(long_wins)} of {total}")
    print(f"\nrow page with {N_INSTRUCTIONS} x {len(LANGS)} outputs: built in {load_ms:.0f} ms, "
          f"search filtered in {filter_ms:.1f} ms (headless Chromium)")
    record_property("row_page_load_ms", load_ms)
    record_property("row_page_filter_ms", filter_ms)
    assert load_ms < 5000 and filter_ms < 5000  # a sanity bound; the numbers above are the point


@needs_chromium
def test_html_in_an_output_is_shown_as_text_and_never_runs(site, browser):
    load(browser, (site / "rows" / "big-iter0.html").as_uri())
    from selenium.webdriver.support.ui import Select

    Select(browser.find_element("id", "lang-filter")).select_by_value("de")
    time.sleep(0.2)  # an onerror handler would have fired by now
    item = browser.find_element("css selector", 'article.item[data-id="3"]')
    assert item.find_element("css selector", ".model pre").text == INJECTED.strip()
    assert browser.execute_script("return window.__injected === undefined")
    assert not browser.find_elements("css selector", "#items img, #items b, #items script")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@needs_chromium
def test_the_site_works_behind_a_plain_http_server_and_requests_nothing_else(site, browser):
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"], cwd=site,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        load(browser, f"http://127.0.0.1:{port}/index.html")
        browser.execute_script("window.scrollTo(0, document.body.scrollHeight)")  # lazy plot images load
        time.sleep(0.5)
        assert browser.find_elements("css selector", "table.board tbody tr")
        resources = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        assert resources and all(url.startswith(f"http://127.0.0.1:{port}/") for url in resources), resources
        browser.find_element("link text", "big iteration 0").click()
        load(browser, browser.current_url)
        assert browser.find_elements("css selector", "article.item")
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_a_run_with_a_results_dir_rebuilds_the_site(tmp_path):
    """The run's results step (run_leaderboard) writes RESULTS/site from every row in the results tree."""
    from types import SimpleNamespace

    from harness.results.run_leaderboard import run_leaderboard
    from harness.store import RunStore

    results = tmp_path / "results"
    store = RunStore(tmp_path / "run")
    for t in (0, 1):
        for root in (store.path("results"), results):
            add_row(Path(root), f"demo-iter{t}", {"en": (40.0 + t, 39.0 + t), "es": (30.0 + t, 29.0 + t)}, iteration=t)
    add_row(results, "other-model", {"en": (10.0, 9.0)}, run=None, iteration=None)
    config = SimpleNamespace(name="demo", languages=["en", "es"], seed=0,
                             evaluation=SimpleNamespace(n_bootstrap=100, results_dir=str(results)))
    assert run_leaderboard(SimpleNamespace(config=config, store=store))
    index = (results / "site" / "index.html").read_text(encoding="utf-8")
    assert "other-model" in index and "demo-iter1" in index
    assert sorted(p.name for p in (results / "site" / "rows").iterdir()) == [
        "demo-iter0.html", "demo-iter1.html", "other-model.html"]
    assert (results / "demo-run" / "leaderboard.csv").is_file()


def test_the_committed_site_is_what_the_committed_results_make(tmp_path):
    """results/site/ mirrors results/: the same files, pages and assets byte for byte (PNG bytes depend on
    the matplotlib version, so only their names are compared)."""
    from harness.results.site import build_site

    committed = Path(__file__).resolve().parents[1] / "results"
    build_site(committed, tmp_path / "site")

    def files(root: Path) -> list[Path]:
        return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())

    assert files(tmp_path / "site") == files(committed / "site")
    for name in files(committed / "site"):
        if name.suffix != ".png":
            assert (tmp_path / "site" / name).read_bytes() == (committed / "site" / name).read_bytes(), name


def test_index_carries_the_language_fidelity_columns_when_rows_have_them(tmp_path):
    from harness.results.rows import read_rows
    from harness.results.site import index_data
    from results_fixtures import synthetic_metrics

    results = tmp_path / "results"
    metrics = {lang: {**synthetic_metrics(50.0, 45.0), "target_language_rate": rate, "mixed_language_rate": 2.5,
                      "language_gated_winrate": 40.0} for lang, rate in (("en", 99.0), ("es", 87.5))}
    write_row(results, {"row_id": "with-language", "model": "m", "kind": "ours", "annotator": "demo-judge",
                        "reference": REFERENCE, "source": "tests/test_site.py"},
              {lang: {"metrics": m} for lang, m in metrics.items()})
    add_row(results, "without-language", {"en": (40.0, 39.0), "es": (30.0, 29.0)})
    (group,) = index_data(read_rows(results), pages=set(), plots=[])["groups"]
    assert group["language_columns"] is True
    values = {row["row_id"]: row["values"] for row in group["rows"]}
    assert values["with-language"]["es_target"] == [87.5, None]
    assert values["with-language"]["avg_target"][0] == pytest.approx(93.25)
    assert values["without-language"]["es_target"] == [None, None]
