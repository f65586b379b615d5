"""The pages in a real headless browser (Debian's chromium, driven by selenium and chromedriver):
from / to a package's page, then every file link, for names with space, #, ?, %20 and Unicode;
the bytes behind each link are the bytes uploaded. /docs renders with no request off this machine."""

from __future__ import annotations

import base64
import shutil
import tempfile

import pytest

from tests.helpers import make_tar

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                                reason="no chromium + chromedriver (Debian: apt-get install chromium chromium-driver;"
                                       " scripts/test installs them when run as root)")

FILES = {
    "run.json": b'{"run_id": "browser-run"}',
    "raw/logs/a b.log": b"alpha line\n",
    "raw/logs/#2?.log": b"beta line\n",
    "raw/logs/x%20y.log": b"gamma line\n",
    "caf\u00e9/\u2603 snow.txt": "snow \u2603\n".encode(),
    "reports/score card.md": b"# Scorecard\n\npass: 212\n",
    "reports/scorecard.json": b'{"pass": 212}',
    "raw/tck report.xml": b"<report pass='212'/>",
    "raw/captures/dump.bin": bytes(range(256)) * 40,
}
FETCH = """
const done = arguments[arguments.length - 1];
fetch(arguments[0]).then(r => r.arrayBuffer().then(b => {
  let s = ''; const a = new Uint8Array(b);
  for (let i = 0; i < a.length; i++) s += String.fromCharCode(a[i]);
  done([r.status, r.headers.get('content-type'), btoa(s)]);
})).catch(e => done(['error', String(e), '']));
"""


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_script_timeout(30)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def package(server):
    pkg = server.create(producer="guide-board", run_id="browser-run", target_profile="cmis-browser-binding",
                        assessment_profile="opencmis-tck")["id"]
    r = server.http.post(f"{server.url}/v1/packages/{pkg}/tar", data=make_tar(FILES),
                         headers={"Content-Type": "application/x-tar"})
    assert r.status_code == 201, r.text
    assert server.http.post(f"{server.url}/v1/packages/{pkg}/finalize").status_code == 200
    server.create(producer="guide-board", run_id="other-run", target_profile="webdav")
    return server.http.get(f"{server.url}/v1/packages/{pkg}").json()


def test_a_person_finds_the_package_and_downloads_every_file(server, browser, package):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as until
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 30)  # a click navigates; the next page is looked at once it is there
    browser.get(f"{server.url}/")
    browser.find_element(By.NAME, "run_id").send_keys("browser-run")
    browser.find_element(By.CSS_SELECTOR, "form button").click()
    wait.until(until.url_contains("run_id=browser-run"))
    listed = browser.find_elements(By.CSS_SELECTOR, "a.package")
    assert [a.text for a in listed] == [package["id"]]
    listed[0].click()  # the URL Statehub records, opened by a browser: the page, not JSON
    wait.until(until.url_to_be(package["url"]))
    assert browser.find_element(By.ID, "status").text == "finalized"
    assert browser.find_element(By.ID, "run-id").text == "browser-run"
    assert browser.find_element(By.ID, "manifest-digest").text == package["manifest_digest"]

    links = {a.text: a.get_attribute("href") for a in browser.find_elements(By.CSS_SELECTOR, "a.file")}
    assert set(links) == set(FILES)
    for path, href in links.items():
        status, media_type, body = browser.execute_async_script(FETCH, href)
        assert status == 200, (path, href, media_type)
        assert base64.b64decode(body) == FILES[path], path

    # a log, the markdown and the JSON open as text in the browser (not offered as downloads)
    for path in ("raw/logs/#2?.log", "reports/score card.md", "caf\u00e9/\u2603 snow.txt"):
        browser.get(package["url"])
        browser.find_element(By.LINK_TEXT, path).click()
        wait.until(until.url_changes(package["url"]))
        assert browser.find_element(By.TAG_NAME, "body").text == FILES[path].decode().strip(), path

    browser.get(package["url"])
    tar_href = browser.find_element(By.ID, "archive-tar").get_attribute("href")
    status, media_type, body = browser.execute_async_script(FETCH, tar_href)
    assert status == 200 and media_type == "application/x-tar"
    assert base64.b64decode(body) == server.http.get(package["archive_url"]).content


def test_docs_render_from_the_apps_own_assets(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(f"{server.url}/docs")
    WebDriverWait(browser, 30).until(expected_conditions.presence_of_element_located((By.CSS_SELECTOR, ".opblock")))
    paths = {e.text for e in browser.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")}
    assert "/v1/packages/{package_id}/archive" in {p.replace("\u200b", "") for p in paths}
    fetched = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert fetched and all(url.startswith(server.url) for url in fetched), fetched
