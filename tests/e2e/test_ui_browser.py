"""The web UI in a real headless Chromium against a real ``python -m dkron agent``.

One scenario walks what an operator does first: open ``/ui``, create a job
through the form (watching the schedule preview), run it, follow its output
live while it still runs, see the result land in the history, and find the
job on the dashboard.  Every wait is an explicit ``WebDriverWait`` on what
the page shows; nothing sleeps.  The browser's console is checked for errors
at the end, so a script error that the assertions happen not to hit still
fails the test.
"""

from __future__ import annotations

import json
import pathlib
import shutil
from collections.abc import Iterator

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import Select, WebDriverWait

from dkron.testing.procs import AgentProc, ProcCluster, wait_for

CHROMIUM = pathlib.Path("/usr/bin/chromium")
CHROMEDRIVER = pathlib.Path("/usr/bin/chromedriver")
WAIT = 20.0

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is not installed")

COMMAND = "for i in 1 2 3; do echo step$i; sleep 1; done"


@pytest.fixture
def agent(tmp_path: pathlib.Path) -> Iterator[AgentProc]:
    with ProcCluster(tmp_path / "agents") as cluster:
        node = cluster.add("node1")
        wait_for(lambda: node.leader_name() == "node1", timeout=30, what="the agent to lead")
        yield node


@pytest.fixture
def driver(tmp_path: pathlib.Path) -> Iterator[webdriver.Chrome]:
    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile}",
        "--window-size=1400,1000",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    chromedriver = shutil.which("chromedriver") or str(CHROMEDRIVER)
    browser = webdriver.Chrome(options=options, service=Service(executable_path=chromedriver))
    try:
        browser.set_page_load_timeout(WAIT)
        yield browser
    finally:
        browser.quit()


def wait(driver: WebDriver) -> WebDriverWait[WebDriver]:
    return WebDriverWait(driver, WAIT, ignored_exceptions=(StaleElementReferenceException,))


def by_testid(value: str) -> tuple[str, str]:
    return (By.CSS_SELECTOR, f'[data-testid="{value}"]')


def visible(driver: WebDriver, value: str) -> WebElement:
    found = wait(driver).until(
        lambda d: next((e for e in d.find_elements(*by_testid(value)) if e.is_displayed()), None),
        f"{value} to be shown",
    )
    assert found is not None
    return found


def set_field(element: WebElement, text: str) -> None:
    element.clear()
    element.send_keys(text)


def count(driver: WebDriver, testid: str) -> str | None:
    return driver.find_element(*by_testid(testid)).get_attribute("data-count")


def sent_authorizations(driver: webdriver.Chrome) -> set[str]:
    """``Authorization`` headers of the API requests the page made, from Chromium's log."""
    found: set[str] = set()
    for entry in driver.get_log("performance"):  # type: ignore[no-untyped-call]
        message = json.loads(entry["message"])["message"]
        if message.get("method") != "Network.requestWillBeSent":
            continue
        req = message["params"]["request"]
        if "/v1/" in req["url"]:
            found.update(v for k, v in req["headers"].items() if k.lower() == "authorization")
    return found


def execution_row(driver: WebDriver, status: str) -> WebElement | None:
    rows = driver.find_elements(By.CSS_SELECTOR, f'tr[data-execution][data-status="{status}"]')
    return rows[0] if rows else None


def test_create_run_and_follow_a_job_live(agent: AgentProc, driver: webdriver.Chrome) -> None:
    base = f"http://127.0.0.1:{agent.api}"
    driver.get(f"{base}/")  # Dkron sends browsers from / to the UI
    wait(driver).until(lambda d: d.current_url.startswith(f"{base}/ui/"), "the / redirect")
    visible(driver, "leader")
    wait(driver).until(lambda d: d.find_element(*by_testid("leader")).text == "node1", "the leader")

    # The token is kept in the browser and sent with every API call.
    set_field(driver.find_element(By.ID, "token-input"), "s3cret")
    driver.find_element(By.CSS_SELECTOR, "#token-form button").click()
    driver.refresh()
    visible(driver, "leader")
    assert driver.find_element(By.ID, "token-input").get_attribute("value") == "s3cret"
    assert "Bearer s3cret" in sent_authorizations(driver)

    # Create the job through the form; the preview shows the next fire times.
    driver.find_element(By.CSS_SELECTOR, '[data-nav="new"]').click()
    set_field(visible(driver, "job-name"), "ui-steps")
    set_field(driver.find_element(*by_testid("job-schedule")), "not a schedule")
    error = visible(driver, "preview-error")
    assert "can't parse job schedule" in error.text
    set_field(driver.find_element(*by_testid("job-schedule")), "@every 1h")
    set_field(driver.find_element(*by_testid("job-timezone")), "Europe/Berlin")
    wait(driver).until(
        lambda d: len(d.find_elements(*by_testid("preview-time"))) == 5, "five previewed fire times"
    )
    set_field(driver.find_element(*by_testid("job-command")), COMMAND)
    assert driver.find_element(*by_testid("job-shell")).is_selected()
    driver.find_element(*by_testid("save-job")).click()

    title = visible(driver, "job-title")
    assert title.text.startswith("ui-steps")
    assert "/ui/#/jobs/ui-steps" in driver.current_url
    status, stored = agent.call("GET", "/v1/jobs/ui-steps")
    assert status == 200
    assert stored["executor_config"] == {"command": COMMAND, "shell": "true"}
    assert stored["timezone"] == "Europe/Berlin"

    # Run it; the history shows it running (live refresh from /v1/events).
    visible(driver, "run-job").click()
    running = wait(driver).until(lambda d: execution_row(d, "running"), "a running execution")
    assert running is not None
    running.find_element(*by_testid("execution-link")).click()

    # Live output: step1 appears while the execution is still running.
    output = visible(driver, "execution-output")
    wait(driver).until(lambda d: "step1" in output.text, "step1 in the live output")
    state = driver.find_element(By.CSS_SELECTOR, '[data-testid="execution-status"]')
    assert state.get_attribute("data-status") == "running", "the run ended before step1 showed"
    assert "step3" not in output.text
    assert driver.find_element(*by_testid("cancel-execution")).is_displayed()

    # Then the result: success, with the whole output.
    wait(driver).until(
        lambda d: (
            d.find_element(*by_testid("execution-status")).get_attribute("data-status") == "success"
        ),
        "the execution to succeed",
    )
    assert output.text.split() == ["step1", "step2", "step3"]
    assert not driver.find_elements(*by_testid("cancel-execution"))

    # Back on the job: the history holds the successful run.
    driver.find_element(By.LINK_TEXT, "ui-steps").click()
    wait(driver).until(lambda d: execution_row(d, "success"), "the success in the history")
    assert execution_row(driver, "running") is None

    # The dashboard counts the job and lists its next fire.
    driver.find_element(By.CSS_SELECTOR, '[data-nav="dashboard"]').click()
    wait(driver).until(lambda d: count(d, "stat-jobs") == "1", "the job count")
    wait(driver).until(lambda d: count(d, "stat-success") == "1", "the job counted as success")
    assert count(driver, "stat-failed") == "0"
    upcoming = [r.text for r in driver.find_elements(*by_testid("upcoming-row"))]
    assert upcoming and upcoming[0].startswith("ui-steps")

    # The jobs list finds it by search and by status, and not by a wrong status.
    driver.find_element(By.CSS_SELECTOR, '[data-nav="jobs"]').click()
    set_field(visible(driver, "job-search"), "steps")
    wait(driver).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, 'tr[data-job="ui-steps"]'), "search result"
    )
    Select(driver.find_element(*by_testid("status-filter"))).select_by_value("failed")
    visible(driver, "no-jobs")
    assert "status=failed" in driver.current_url

    # Script errors and console.error calls; failed requests (the 400 of the
    # bad schedule above) are logged as "network" entries and are expected.
    logs = driver.get_log("browser")  # type: ignore[no-untyped-call]
    problems = [e for e in logs if e.get("level") == "SEVERE" and e.get("source") != "network"]
    assert problems == []


def test_cancel_a_running_execution_then_delete_the_job(
    agent: AgentProc, driver: webdriver.Chrome
) -> None:
    job = {
        "name": "sleeper",
        "schedule": "@manually",
        "executor": "shell",
        "executor_config": {"command": "echo started; sleep 60", "shell": "true"},
    }
    status, _ = agent.call("POST", "/v1/jobs", job)
    assert status == 201
    driver.get(f"http://127.0.0.1:{agent.api}/ui/#/jobs/sleeper")
    visible(driver, "run-job").click()
    running = wait(driver).until(lambda d: execution_row(d, "running"), "a running execution")
    assert running is not None
    running.find_element(*by_testid("execution-link")).click()
    output = visible(driver, "execution-output")
    wait(driver).until(lambda d: "started" in output.text, "the live output")
    visible(driver, "cancel-execution").click()
    wait(driver).until(
        lambda d: (
            d.find_element(*by_testid("execution-status")).get_attribute("data-status")
            == "cancelled"
        ),
        "the execution to be cancelled",
    )
    assert not driver.find_elements(*by_testid("cancel-execution"))

    # Delete asks first; cancelling the dialog keeps the job.
    driver.find_element(By.LINK_TEXT, "sleeper").click()
    wait(driver).until(lambda d: execution_row(d, "cancelled"), "the cancelled run in the history")
    visible(driver, "delete-job").click()
    dialog = driver.find_element(By.ID, "confirm-dialog")
    wait(driver).until(lambda d: dialog.is_displayed(), "the confirmation")
    dialog.find_element(By.CSS_SELECTOR, 'button[value="cancel"]').click()
    wait(driver).until(lambda d: not dialog.is_displayed(), "the confirmation to close")
    assert agent.call("GET", "/v1/jobs/sleeper")[0] == 200
    visible(driver, "delete-job").click()
    wait(driver).until(lambda d: dialog.is_displayed(), "the confirmation")
    driver.find_element(By.ID, "confirm-ok").click()
    wait(driver).until(lambda d: d.current_url.endswith("#/jobs"), "the jobs list")
    visible(driver, "no-jobs")
    assert agent.call("GET", "/v1/jobs/sleeper")[0] == 404


def test_the_running_page_lists_live_runs_with_their_output_and_cancels_them(
    agent: AgentProc, driver: webdriver.Chrome
) -> None:
    job = {
        "name": "waiter",
        "schedule": "@manually",
        "executor": "shell",
        "executor_config": {"command": "echo first; echo second; sleep 60", "shell": "true"},
    }
    assert agent.call("POST", "/v1/jobs", job)[0] == 201
    driver.get(f"http://127.0.0.1:{agent.api}/ui/#/running")
    visible(driver, "none-running")
    assert agent.call("POST", "/v1/jobs/waiter/run")[0] == 200

    # The run appears by itself, and its output's last line follows.
    row = visible(driver, "running-table").find_element(By.CSS_SELECTOR, 'tr[data-job="waiter"]')
    wait(driver).until(
        lambda d: (
            d.find_element(
                By.CSS_SELECTOR, 'tr[data-job="waiter"] [data-testid="running-output"]'
            ).text
            == "second"
        ),
        "the end of the output",
    )
    assert (row.find_element(By.LINK_TEXT, "waiter").get_attribute("href") or "").endswith(
        "#/jobs/waiter"
    )

    # The dashboard counts it and links here.
    driver.find_element(By.CSS_SELECTOR, '[data-nav="dashboard"]').click()
    wait(driver).until(lambda d: count(d, "stat-running") == "1", "the running count")
    driver.find_element(*by_testid("stat-running")).click()
    wait(driver).until(lambda d: d.current_url.endswith("#/running"), "the running page")

    # Cancel from the list: the run stops and leaves it.
    visible(driver, "cancel-running").click()
    visible(driver, "none-running")
    status, execs = agent.call("GET", "/v1/jobs/waiter/executions")
    assert status == 200 and [e["status"] for e in execs] == ["cancelled"]

    logs = driver.get_log("browser")  # type: ignore[no-untyped-call]
    assert [e for e in logs if e.get("level") == "SEVERE" and e.get("source") != "network"] == []
