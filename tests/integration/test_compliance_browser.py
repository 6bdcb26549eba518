"""The compliance admin in a real browser (Debian's chromium, headless, driven by Selenium):
what a privacy officer and a compliance user do to answer "who changed this child's age,
when, from which request, and prove it is unaltered".

Screenshots of each step go to var/test-logs/screenshots, or to TEDDY_SCREENSHOT_DIR
(docs/screenshots holds the ones README shows).
"""
from __future__ import annotations

import csv
import os
import shutil
import time
from pathlib import Path

import pytest
from django.contrib.staticfiles.handlers import StaticFilesHandler
from django.core.wsgi import get_wsgi_application
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

from eventsourcing_app.models import AccessRecord
from tests.conftest import LOG_DIR
from tests.integration.compliance_helpers import PASSWORD, make_family, staff_user
from tests.integration.helpers import serve_http

# Debian's packages (scripts/test installs them); found on PATH.
CHROMIUM, CHROMEDRIVER = shutil.which("chromium") or "chromium", shutil.which("chromedriver") or "chromedriver"
SHOTS = Path(os.environ.get("TEDDY_SCREENSHOT_DIR") or LOG_DIR / "screenshots")


@pytest.fixture(scope="module")
def site():
    with serve_http(StaticFilesHandler(get_wsgi_application())) as base:
        yield base


@pytest.fixture
def browser(tmp_path):
    for binary in (CHROMIUM, CHROMEDRIVER):
        assert Path(binary).exists(), f"{binary} is not on PATH: install Debian's chromium and chromium-driver"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1050",
                     "--disable-gpu", "--no-first-run", "--disable-extensions"):
        options.add_argument(argument)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    driver.downloads = downloads
    driver.implicitly_wait(0)
    yield driver
    driver.quit()


def shot(driver, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(SHOTS / f"{name}.png"))


def wait_for(driver, css: str, timeout: float = 15):
    return WebDriverWait(driver, timeout).until(expected_conditions.presence_of_element_located((By.CSS_SELECTOR, css)))


def log_in(driver, site: str, user) -> None:
    driver.delete_all_cookies()
    driver.get(f"{site}/admin/login/")
    driver.find_element(By.NAME, "username").send_keys(user.username)
    driver.find_element(By.NAME, "password").send_keys(PASSWORD)
    driver.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    wait_for(driver, "#user-tools")


def search_stream(driver, site: str, term: str) -> None:
    driver.get(f"{site}/admin/eventsourcing_app/stream/")
    box = driver.find_element(By.ID, "searchbar")
    box.send_keys(term)
    box.submit()
    wait_for(driver, "#result_list")


def change_of(driver, field: str) -> list[str]:
    """[before, after] of a field in the event's "what it changed" table."""
    row = driver.find_element(By.CSS_SELECTOR, f'#event-changes tr.change[data-field="{field}"]')
    return [cell.text for cell in row.find_elements(By.TAG_NAME, "td")][1:3]


def test_an_officer_and_a_compliance_user_answer_who_changed_the_age(store, site, browser):
    family = make_family("browser")
    officer, auditor = staff_user("privacy-officer"), staff_user("compliance")
    stream_id = f"child.{family.child_id}"

    # The officer finds the child by its bare id.
    log_in(browser, site, officer)
    search_stream(browser, site, family.child_id)
    shot(browser, "01-streams-search-by-bare-id")
    browser.find_element(By.LINK_TEXT, stream_id).click()
    wait_for(browser, "#timeline")
    shot(browser, "02-stream-timeline-masked")
    # The timeline says which update touched the age, though the values are masked.
    rows = browser.find_elements(By.CSS_SELECTOR, "#timeline tr.timeline-event")
    touching_age = [r for r in rows if r.find_elements(By.CSS_SELECTOR, 'tr.change[data-field="age"]')]
    assert [r.get_attribute("data-version") for r in touching_age] == ["1", str(family.age_event.version)]
    assert family.child_name not in browser.page_source
    touching_age[1].find_element(By.CSS_SELECTOR, "a.event-link").click()

    # The event: who, when (UTC, seconds), which request, and its place in the hash chain.
    wait_for(browser, "#event-metadata")
    assert browser.find_element(By.ID, "event-actor").text == "system:tests"
    assert "UTC" in browser.find_element(By.CSS_SELECTOR, "#event-metadata").text
    assert browser.find_element(By.ID, "chain-status").text.startswith("intact")
    assert change_of(browser, "age") == ["•••", "•••"]
    shot(browser, "03-event-masked-change")
    browser.find_element(By.ID, "correlation-link").click()
    wait_for(browser, "#result_list")
    types = [cell.text for cell in browser.find_elements(By.CSS_SELECTOR, "#result_list td.field-event_type")]
    assert sorted(types) == ["ChildProfileUpdated", "SafetySettingsChanged"]
    shot(browser, "04-events-of-one-request")
    browser.back()

    # Reveal, with a reason: 6 became 7.
    wait_for(browser, "#reveal-form")
    browser.find_element(By.ID, "reveal-reason").send_keys("parent's access request #4711")
    browser.find_element(By.ID, "reveal-submit").click()
    wait_for(browser, ".revealed-note")
    assert change_of(browser, "age") == ["6", "7"]
    shot(browser, "05-event-revealed-before-after")

    # Export the stream as CSV and read the file.
    browser.find_element(By.ID, "stream-link").click()
    wait_for(browser, "#export-stream").click()
    wait_for(browser, "#export-form")
    shot(browser, "06-export-confirmation")
    browser.find_element(By.ID, "export-reason").send_keys("evidence for case 2026-118")
    browser.find_element(By.ID, "export-submit").click()
    deadline = time.monotonic() + 30
    while not list(browser.downloads.glob("*.csv")) and time.monotonic() < deadline:
        time.sleep(0.1)
    files = list(browser.downloads.glob("*.csv"))
    assert files, "the CSV export was not downloaded"
    with files[0].open(newline="", encoding="utf-8") as handle:
        exported = list(csv.DictReader(handle))
    assert [row["version"] for row in exported] == ["1", "2", "3", "4", "5"]
    assert {row["stream_id"] for row in exported} == {stream_id}
    assert family.child_name not in files[0].read_text(encoding="utf-8")  # masked unless asked to decrypt

    # Prove it is unaltered.
    browser.get(f"{site}/admin/eventsourcing_app/stream/{stream_id}/change/")
    wait_for(browser, "#verify-stream").click()
    wait_for(browser, "#verify-reason").send_keys("proof for case 2026-118")
    browser.find_element(By.ID, "verify-submit").click()
    result = wait_for(browser, "#verify-result")
    assert result.text.startswith("verified:"), result.text
    shot(browser, "07-integrity-verified")

    # A compliance user sees the same pages, masked, with no reveal or erase control.
    log_in(browser, site, auditor)
    search_stream(browser, site, family.child_id)
    browser.find_element(By.LINK_TEXT, stream_id).click()
    wait_for(browser, "#timeline")
    assert not browser.find_elements(By.ID, "reveal-form") and family.child_name not in browser.page_source
    browser.get(f"{site}/admin/eventsourcing_app/event/{family.age_event.pk}/change/")
    wait_for(browser, "#event-changes")
    assert change_of(browser, "age") == ["•••", "•••"]
    assert not browser.find_elements(By.ID, "reveal-form")
    shot(browser, "08-compliance-user-masked")
    browser.get(f"{site}/admin/eventsourcing_app/subjectkey/child_3A{family.child_id}/change/")
    wait_for(browser, "#subject-facts")
    assert browser.find_element(By.ID, "key-state").text == "active"
    assert not browser.find_elements(By.ID, "erase-subject") and not browser.find_elements(By.ID, "export-subject")
    assert browser.find_elements(By.ID, "verify-subject")

    # The access log shows the officer's reveal and export.
    browser.get(f"{site}/admin/eventsourcing_app/accessrecord/?q={stream_id}")
    wait_for(browser, "#result_list")
    listed = browser.find_element(By.ID, "result_list").text
    assert "parent's access request #4711" in listed and "evidence for case 2026-118" in listed
    shot(browser, "09-access-log")
    records = AccessRecord.objects.filter(username=officer.username).order_by("id")
    assert [(r.action, r.scope) for r in records] == [("reveal", "event"), ("export", "stream"), ("verify", "stream")]
