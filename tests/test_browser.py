"""The Prefect UI in headless Chromium against the local stack (``python -m dbt_cloud_gate.stack``): the deployments' run forms
explain every parameter; a completed ETL flow run shows its artifacts (the dbt Cloud run link, the run summary,
the model table, the load report) rendered. Screenshots go to SCREENSHOTS (printed).

Chromium and chromedriver come from Debian (``.ci/run`` installs them); selenium drives them. Without them
the tests fail in CI (CI set) and are skipped, with the reason, elsewhere."""

from __future__ import annotations

import os
import re
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowRunFilter,
    FlowRunFilterParentFlowRunId,
)

from dbt_cloud_gate.stack.services import ROOT
from tests.test_stack import RunningStack, wait_state

pytestmark = pytest.mark.slow

SCREENSHOTS = ROOT / ".screenshots" / "test_browser"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
# Without the background-networking flags Chromium keeps calling Google's hosts, refused on a closed network.
CHROMIUM_FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1000",
]
PAGE_TIMEOUT = 60.0
# The run forms' height at 1400x1000 (the page scrolls inside an element: the tallest scroll height counts). Before
# the settings groups were optional and the targets a variable's name, the ETL form took 7,916 px and the job form
# 4,317 px; now each group is one line until opened: 2,054 and 1,934 px, the Run Name and Start sections included.
FORM_HEIGHT_LIMIT = {"dbt-cloud-etl/nightly-etl": 2600, "dbt-cloud-job/dbt-cloud-job": 2600}


def _unavailable(reason: str) -> None:
    message = f"{reason}: install Debian's chromium and chromium-driver (.ci/run does) and `pip install -e '.[dev]'`"
    if os.environ.get("CI"):
        pytest.fail(f"The browser test cannot run in CI. {message}", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        _unavailable(f"no Chromium at {CHROMIUM} or no chromedriver at {CHROMEDRIVER}")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _unavailable("selenium is not installed")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM  # both paths given: selenium downloads nothing
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    shutil.rmtree(SCREENSHOTS, ignore_errors=True)  # this run's screenshots only
    SCREENSHOTS.mkdir(parents=True)
    print(f"\nscreenshots: {SCREENSHOTS}")
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    running = RunningStack(tmp_path_factory.mktemp("browser") / "stack")
    try:
        yield running
    finally:
        if running.process.poll() is None:
            running.process.send_signal(signal.SIGINT)
            running.process.wait(timeout=90)


def flat(text: str) -> str:
    """Text as compared: whitespace runs made one space, markdown's code and emphasis marks dropped."""
    return re.sub(r"\s+", " ", text.replace("`", "").replace("*", "")).strip()


def page_text(driver: Any) -> str:
    from selenium.webdriver.common.by import By

    return str(driver.find_element(By.TAG_NAME, "body").text)


def wait_for(driver: Any, what: str, check: Any) -> Any:
    """Poll ``check(driver)`` until it returns something truthy; fail naming ``what`` and saving a screenshot."""
    deadline = time.monotonic() + PAGE_TIMEOUT
    while True:
        try:
            found = check(driver)
        except Exception:  # the page is still rendering (stale or missing elements)
            found = None
        if found:
            return found
        if time.monotonic() > deadline:
            shot = SCREENSHOTS / "timeout.png"
            driver.save_screenshot(str(shot))
            raise AssertionError(f"{what}: not shown after {PAGE_TIMEOUT} s (see {shot}):\n{page_text(driver)[:3000]}")
        time.sleep(0.3)


def page_height(driver: Any) -> int:
    """The page's height: Prefect's UI scrolls inside an element, so the tallest scroll height of any element."""
    return int(
        driver.execute_script(
            "let m = document.documentElement.scrollHeight;"
            "for (const e of document.querySelectorAll('*')) { m = Math.max(m, e.scrollHeight) } return m"
        )
        or 1000
    )


def screenshot(driver: Any, name: str) -> Path:
    """A screenshot of the whole page (the window made as tall as the page first)."""
    height = page_height(driver)
    driver.set_window_size(1400, min(max(height, 1000), 9000))
    path = SCREENSHOTS / f"{name}.png"
    driver.save_screenshot(str(path))
    driver.set_window_size(1400, 1000)
    return path


def click_tab(driver: Any, label: str) -> None:
    from selenium.webdriver.common.by import By

    tab = wait_for(
        driver,
        f"the {label} tab",
        lambda d: [
            e
            for e in d.find_elements(
                By.XPATH, f"//li[@role='tab' or contains(@class, 'p-tab')][normalize-space(.)='{label}']"
            )
            if e.is_displayed()
        ],
    )
    tab[0].click()


@pytest.mark.parametrize("deployment", ["dbt-cloud-etl/nightly-etl", "dbt-cloud-job/dbt-cloud-job"])
def test_run_form_shows_every_parameter_description(browser: Any, stack: RunningStack, deployment: str) -> None:
    with stack.client() as client:
        schema = client.read_deployment_by_name(deployment).parameter_openapi_schema
    descriptions = {name: flat(spec["description"]) for name, spec in schema["properties"].items()}
    assert descriptions and all(descriptions.values())
    browser.get(f"{stack.info['ui_url']}/deployments/deployment/{stack.info['deployments'][deployment]}/run")
    first = next(iter(descriptions.values()))
    wait_for(browser, f"the run form of {deployment}", lambda d: first in flat(page_text(d)))
    shown = flat(page_text(browser))
    height = page_height(browser)
    shot = screenshot(browser, f"run-form-{deployment.replace('/', '-')}")
    print(f"\nrun form of {deployment}: {height} px tall at 1400x1000")
    missing = {name: text for name, text in descriptions.items() if text not in shown}
    assert not missing, f"descriptions not shown on the run form (see {shot}): {missing}"
    assert height <= FORM_HEIGHT_LIMIT[deployment], f"the run form is {height} px tall (see {shot})"


def test_completed_etl_run_renders_link_summary_and_model_table(browser: Any, stack: RunningStack) -> None:
    from selenium.webdriver.common.by import By

    with stack.client() as client:
        etl = client.create_flow_run_from_deployment(
            stack.info["deployments"]["dbt-cloud-etl/nightly-etl"], parameters={"wait": {"poll_interval_seconds": 0.2}}
        )
        done = wait_state(client, etl.id, {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"})
        assert done.state.type.value == "COMPLETED", Path(stack.info["worker_log"]).read_text()[-6000:]
        (job,) = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[etl.id]))
        )
        artifacts = {
            artifact.key: artifact
            for artifact in client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[etl.id, job.id]))
            )
        }
    ui = stack.info["ui_url"]
    keys = {
        "link": "dbt-cloud-job-101-run",
        "summary": "dbt-cloud-job-101-summary",
        "models": "dbt-cloud-job-101-models",
    }
    assert set(keys.values()) | {"dbt-cloud-etl-nightly-etl"} <= set(artifacts), sorted(artifacts)
    found = re.search(r"\((http[^)]+)\)", str(artifacts[keys["link"]].data))
    assert found, artifacts[keys["link"]].data
    run_url = found.group(1)
    run_id = run_url.rstrip("/").rsplit("/", 1)[1]

    # The flow run pages: the ETL's load report, the dbt Cloud subflow's three artifacts.
    for flow_run, expected, name in (
        (etl.id, ["dbt-cloud-etl-nightly-etl"], "etl-flow-run-artifacts"),
        (job.id, list(keys.values()), "dbt-cloud-job-flow-run-artifacts"),
    ):
        browser.get(f"{ui}/runs/flow-run/{flow_run}")
        click_tab(browser, "Artifacts")
        wait_for(browser, f"artifacts {expected}", lambda d, e=expected: all(key in page_text(d) for key in e))
        screenshot(browser, name)

    # The ETL report, on the run the user opens: the dbt run's link and models, a table that fits 1,280 px.
    browser.set_window_size(1280, 1000)
    try:
        browser.get(f"{ui}/artifacts/artifact/{artifacts['dbt-cloud-etl-nightly-etl'].id}")
        header = wait_for(
            browser,
            "the ETL report's table",
            lambda d: [th.text for th in d.find_elements(By.CSS_SELECTOR, "table th")],
        )
        assert header == ["target", "written (changed)", "skipped", "up to"], header
        assert any(a.get_attribute("href") == run_url for a in browser.find_elements(By.TAG_NAME, "a"))
        assert "dbt models: 4: success 4" in flat(page_text(browser))
        overflow = browser.execute_script(
            "const t = document.querySelector('table'); let e = t;"
            "while (e) { if (e.scrollWidth > e.clientWidth + 1) return e.scrollWidth - e.clientWidth; e = e.parentElement }"
            "return t.getBoundingClientRect().right > window.innerWidth ? 1 : 0"
        )
        browser.save_screenshot(str(SCREENSHOTS / "artifact-etl-report-1280.png"))
        assert overflow == 0, (
            f"the ETL report's table is cut at 1,280 px (see {SCREENSHOTS}/artifact-etl-report-1280.png)"
        )
    finally:
        browser.set_window_size(1400, 1000)

    # Each artifact's own page, rendered: a link to the dbt Cloud run, the summary's heading and table, the models.
    browser.get(f"{ui}/artifacts/artifact/{artifacts[keys['link']].id}")
    links = wait_for(
        browser,
        "the dbt Cloud run link",
        lambda d: [a for a in d.find_elements(By.TAG_NAME, "a") if a.get_attribute("href") == run_url],
    )
    assert links[0].text == f"dbt Cloud run {run_id}"
    screenshot(browser, "artifact-link")

    browser.get(f"{ui}/artifacts/artifact/{artifacts[keys['summary']].id}")
    heading = wait_for(browser, "the summary's heading", lambda d: d.find_elements(By.TAG_NAME, "h2"))
    assert heading[0].text == f"dbt Cloud run {run_id} of job 101: Success"
    cells = [cell.text for cell in browser.find_elements(By.CSS_SELECTOR, "table td")]
    assert cells[:2] == ["outcome", "succeeded"], cells
    assert any(a.get_attribute("href") == run_url for a in browser.find_elements(By.TAG_NAME, "a"))
    screenshot(browser, "artifact-summary")

    browser.get(f"{ui}/artifacts/artifact/{artifacts[keys['models']].id}")
    header = wait_for(
        browser, "the model table", lambda d: [th.text for th in d.find_elements(By.CSS_SELECTOR, "table th")]
    )
    assert header == ["model", "type", "status", "seconds", "message"]
    rows = [
        [td.text for td in tr.find_elements(By.TAG_NAME, "td")]
        for tr in browser.find_elements(By.CSS_SELECTOR, "table tbody tr")
    ]
    assert [row[0] for row in rows] == ["stg_orders", "stg_customers", "orders", "customers"]
    assert {row[2] for row in rows} == {"success"}
    screenshot(browser, "artifact-models")
