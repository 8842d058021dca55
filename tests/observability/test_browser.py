"""Headless Chromium renders Flower's tasks page, behind basic auth, with our jobs in it.

Flower fills its tasks table with JavaScript (an AJAX datatable), so the test waits
for the rows in the live DOM rather than reading the HTML Flower serves.
"""

import os

from tests.conftest import ARTIFACTS
from tests.support.browser import chromium_driver, quit_driver, send_basic_auth


def test_chromium_shows_the_jobs_on_flowers_tasks_page(flower_server, batch):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = chromium_driver()
    try:
        send_basic_auth(driver, flower_server.user, flower_server.password)
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
        quit_driver(driver)
