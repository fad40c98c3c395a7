"""Screenshots of the leaderboard site in headless Chromium (the system's; nothing downloaded).

Usage (after `xlpref leaderboard --html results/site`):

    python scripts/site_screenshot.py results/site docs/img/leaderboard.png [docs/img/leaderboard-row.png]

The first image is index.html; the optional second is the first row page with its outputs.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from harness.results.browser import chromium


def wait_ready(driver) -> None:
    deadline = time.time() + 30
    while driver.find_element("tag name", "body").get_attribute("data-ready") != "true":
        if time.time() > deadline:
            raise SystemExit(f"{driver.current_url} did not finish building")
        time.sleep(0.05)


def main(site: str, index_png: str, row_png: str | None = None) -> None:
    site_dir = Path(site).resolve()
    with chromium(width=1400, height=1050) as driver:
        driver.get((site_dir / "index.html").as_uri())
        wait_ready(driver)
        Path(index_png).parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(index_png)
        print(f"wrote {index_png}")
        pages = sorted((site_dir / "rows").glob("*.html"))
        if row_png and pages:
            driver.get(pages[-1].as_uri())
            wait_ready(driver)
            driver.save_screenshot(row_png)
            print(f"wrote {row_png}")


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4):
        raise SystemExit(__doc__)
    main(*sys.argv[1:])
