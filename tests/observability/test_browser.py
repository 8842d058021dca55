"""Headless Chromium renders Flower's tasks page, behind basic auth, with our jobs in it.

Flower fills its tasks table with JavaScript (an AJAX datatable), so the test waits
for the rows in the live DOM rather than reading the HTML Flower serves.
"""

import base64
import os
import shutil
import tempfile

from tests.conftest import ARTIFACTS

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def chromium_driver():
    """A headless Chromium under chromedriver, fit to run as root with no network."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    for binary in (CHROMIUM, CHROMEDRIVER):
        assert os.access(binary, os.X_OK), f"{binary} is missing: apt-get install chromium chromium-driver"
    profile = tempfile.mkdtemp(prefix="jobyard-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--window-size=1600,1000", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.profile_dir = profile
    return driver


def test_chromium_shows_the_jobs_on_flowers_tasks_page(flower_server, batch):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = chromium_driver()
    try:
        token = base64.b64encode(f"{flower_server.user}:{flower_server.password}".encode()).decode()
        # Send the credentials with every request the page makes, AJAX included.
        driver.execute_cdp_cmd("Network.enable", {})
        driver.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Basic {token}"}})
        driver.get(f"{flower_server.url}/tasks")

        def rows_with_our_jobs(d):
            text = d.find_element(By.ID, "tasks-table").text
            names = ("sample_jobs.add", "sample_jobs.balloon", "sample_jobs.sleep_for")
            return text if all(name in text for name in names) else None

        table = WebDriverWait(driver, 30, poll_frequency=0.3).until(rows_with_our_jobs)
        assert batch.oom.id in table and "FAILURE" in table and "SUCCESS" in table
        assert "ContainerOOMKilled" in table, "the exception column names the typed reason"
        os.makedirs(ARTIFACTS, exist_ok=True)
        shot = os.path.join(ARTIFACTS, "flower-tasks.png")
        assert driver.save_screenshot(shot) and os.path.getsize(shot) > 10_000

        driver.set_window_size(1600, 1800)  # the whole task page, facts row included
        driver.get(f"{flower_server.url}/task/{batch.oom.id}")
        page = WebDriverWait(driver, 15).until(lambda d: d.find_element(By.ID, "task-page").text)
        assert "Container" in page and "oom_killed=true" in page and "sample_jobs.balloon" in page
        assert driver.save_screenshot(os.path.join(ARTIFACTS, "flower-task-oom.png"))
    finally:
        driver.quit()
        shutil.rmtree(driver.profile_dir, ignore_errors=True)
