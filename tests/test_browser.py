"""The dashboard plugin in a real browser: Airflow's services run, Chromium (driven by Playwright) logs in
through Airflow's login page, opens the dashboard from the navigation bar, and reads numbers that
equal the lake's manifests. Anonymous requests to the plugin are refused like the REST API's."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from airflow_services import Airflow
from dashboard_fixtures import commit_all, pipeline_manifests, training_manifests

pytestmark = pytest.mark.airflow
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]


@pytest.fixture(scope="module")
def airflow(tmp_path_factory):
    if not CHROMIUM.exists():
        pytest.skip("no /usr/bin/chromium: install Debian's `chromium` (.ci/run does: apt-get install -y chromium)")
    pytest.importorskip("playwright", reason="playwright (pip) drives the browser")
    af = Airflow(tmp_path_factory.mktemp("browser"))
    with af.running():
        yield af


def status_of(url: str, token: str | None = None) -> int:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code


def test_plugin_refuses_anonymous_and_accepts_a_token(airflow: Airflow) -> None:
    base = f"http://127.0.0.1:{airflow.port}/phiflow"
    assert status_of(f"{base}/") == 401
    assert status_of(f"{base}/data.json") == 401
    assert status_of(f"{base}/", token="not-a-jwt") in (401, 403)
    airflow.login()
    assert status_of(f"{base}/data.json", token=airflow._token) == 200


def test_dashboard_through_the_ui(airflow: Airflow) -> None:
    from playwright.sync_api import sync_playwright

    ms = pipeline_manifests(4, seed=7)
    trained = training_manifests("demo", seed=7)
    commit_all(airflow.lake, ms + trained)
    kept = {ds: sum(m.row_count for m in ms if m.dataset == ds) for ds in {m.dataset for m in ms}}
    read = sum(m.counters["read"] for m in ms if m.dataset == "web.extracted")
    below = sum(m.counters["dropped"]["below_quality_threshold"] for m in ms if m.dataset == "web.quality")
    password = json.loads((Path(airflow.env["AIRFLOW_HOME"]) / "simple_auth_manager_passwords.json.generated")
                          .read_text())["admin"]
    home = Path(airflow.env["PHIFLOW_HOME"])
    shot = home / "artifacts" / "dashboard.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"http://127.0.0.1:{airflow.port}/")
            page.locator("input[name=username]").fill("admin", timeout=60_000)
            page.locator("input[name=password]").fill(password)
            page.locator("button[type=submit]").click()
            page.locator("a[href='/plugin/phiflow']").click(timeout=60_000)  # the nav bar's plugin entry
            frame = page.frame_locator("iframe")

            def cell(testid: str) -> str:
                return frame.locator(f"[data-testid='{testid}']").inner_text(timeout=30_000).strip()

            def bar(testid: str) -> str:  # the value printed at the end of an SVG bar
                return (frame.locator(f"[data-testid='{testid}'] text.v").text_content(timeout=30_000) or "").strip()

            assert cell("partitions").startswith(f"{len(ms) + len(trained)} committed partitions")
            assert cell("funnel:web:all intervals:web.extracted:read") == str(read)
            assert cell("funnel:web:all intervals:web.clean:kept") == str(kept["web.clean"])
            assert cell("drops:web:web.quality:below_quality_threshold") == str(below)
            assert cell("rows:web.langid") == str(kept["web.langid"])
            assert frame.get_by_text("Language mix (kept documents)").is_visible()
            # every panel shows the lake's data, not its "nothing yet" note
            langs = sum(m.counters["languages"]["en"] for m in ms if m.dataset == "web.langid")
            assert bar("lang:web:en") == str(langs)
            topics = sum(m.counters["topics_after"]["science"] for m in ms if m.dataset == "web.quality")
            assert bar("topic:web:after:science") == str(topics)
            removed = sum(n for m in ms if m.dataset == "web.clean" for n in m.counters["dropped"].values())
            assert cell("contamination:web:removed") == str(removed)
            assert cell("mix:recipe=demo:pretrain:synthetic:share") == "70.0%"
            assert frame.locator("[data-testid='curve:pretrain recipe=demo'] polyline").count() == 1
            assert cell("stress:recipe=demo:x300").startswith("diverged: loss rose")
            assert "pretraining went on" in cell("stress-gate:recipe=demo")
            assert cell("rejected:web.quality.rejected:below_quality_threshold") == str(below)
            example = frame.locator("[data-testid='rejected-example:web.quality.rejected:below_quality_threshold']")
            assert example.count() == 3 and example.first.inner_text().startswith("https://example.org/")
            assert frame.locator("p.none").count() == 1, frame.locator("p.none").all_inner_texts()  # failed files
            page.screenshot(path=str(shot))
        finally:
            browser.close()
    assert shot.stat().st_size > 10_000  # the artifact (docs/img/dashboard.png is a copy of one)
