"""Search by checksum, public URLs, text media types and the HTML pages (without a browser)."""

from __future__ import annotations

import os
import re
from html.parser import HTMLParser
from urllib.parse import urljoin

import blake3
import pytest

from casstore.config import Settings
from casstore.store import Store
from tests.helpers import LiveServer, assert_problem, sha

BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,*/*;q=0.8"


def finalize(server, pkg):
    r = server.http.post(f"{server.url}/v1/packages/{pkg}/finalize")
    assert r.status_code == 200, r.text
    return r.json()


def test_blob_lookup_names_every_package_and_path_holding_the_bytes(server):
    data = b"shared evidence\n"
    first = server.create(run_id="r1")["id"]
    second = server.create(run_id="r2")["id"]
    server.put(first, "logs/a.log", data)
    server.put(second, "x/b c.log", data)
    server.put(second, "x/again.log", data)
    server.put(second, "other", b"other bytes")
    r = server.http.get(f"{server.url}/v1/blobs/{sha(data)}")
    assert r.status_code == 200
    body = r.json()
    assert body["sha256"] == sha(data) and body["size"] == len(data)
    assert body["blake3"] == blake3.blake3(data).hexdigest()
    assert body["state"] == "present" and body["refcount"] == 3 and body["next_cursor"] is None
    assert [(h["package_id"], h["path"]) for h in body["holders"]] == [
        (second, "x/again.log"), (second, "x/b c.log"), (first, "logs/a.log")]
    assert body["holders"][1]["url"] == f"{server.url}/v1/packages/{second}/files/x/b%20c.log"
    assert body["holders"][2]["run_id"] == "r1"
    # paged: one at a time, the same three in the same order
    seen, cursor = [], None
    while True:
        page = server.http.get(f"{server.url}/v1/blobs/sha256:{sha(data)}",
                               params={"limit": 1, **({"cursor": cursor} if cursor else {})}).json()
        seen += [(h["package_id"], h["path"]) for h in page["holders"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == [(h["package_id"], h["path"]) for h in body["holders"]]


def test_blob_lookup_refuses_unknown_and_malformed_digests(server):
    body = assert_problem(server.http.get(f"{server.url}/v1/blobs/{sha(b'never stored')}"), 404)
    assert sha(b"never stored") in body["detail"]
    assert_problem(server.http.get(f"{server.url}/v1/blobs/not-a-digest"), 422)
    assert_problem(server.http.get(f"{server.url}/v1/blobs/{sha(b'x')}?limit=0"), 422)


def test_every_url_the_server_returns_is_built_on_the_public_url(settings, tmp_path):
    public = "https://artifacts.example.org/store"
    store = Store(Settings(**{**settings.__dict__, "public_url": public + "/"}))
    live = LiveServer(store)
    try:
        pkg = live.create(run_id="public")
        assert pkg["url"] == f"{public}/v1/packages/{pkg['id']}"
        assert pkg["archive_url"] is None
        live.put(pkg["id"], "a#b.log", b"x")
        done = finalize(live, pkg["id"])
        assert done["archive_url"] == f"{public}/v1/packages/{pkg['id']}/archive"
        listed = live.http.get(f"{live.url}/v1/packages").json()["items"][0]
        assert listed["url"] == pkg["url"]
        holder = live.http.get(f"{live.url}/v1/blobs/{sha(b'x')}").json()["holders"][0]
        assert holder["url"] == f"{public}/v1/packages/{pkg['id']}/files/a%23b.log"
        page = live.http.get(pkg["url"].replace(public, live.url), headers={"Accept": BROWSER_ACCEPT}).text
        assert f'href="{public}/v1/packages/{pkg["id"]}/files/a%23b.log"' in page
        docs = live.http.get(f"{live.url}/docs").text
        assert f'src="{public}/docs/assets/swagger-ui-bundle.js"' in docs
    finally:
        live.close()
        store.close()


def test_without_a_public_url_links_use_the_address_asked(server):
    pkg = server.create()
    assert pkg["url"] == f"{server.url}/v1/packages/{pkg['id']}"


@pytest.mark.parametrize("path, media_type", [
    ("raw/logs/server.log", "text/plain"), ("reports/scorecard.md", "text/markdown"),
    ("reports/scorecard.json", "application/json"), ("raw/tck-report.xml", "application/xml"),
    ("raw/tck-report.txt", "text/plain"), ("raw/captures/heap.hprof", "application/octet-stream")])
def test_text_files_are_served_with_a_text_media_type(server, path, media_type):
    pkg = server.create()["id"]
    assert server.put(pkg, path, b"line\n").json()["media_type"] == media_type
    assert server.get(pkg, path).headers["Content-Type"].split(";")[0] == media_type


class Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links: list[tuple[str | None, str]] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "a" and "href" in attrs:
            self.links.append((attrs.get("class"), attrs["href"]))


def test_package_url_answers_json_to_programs_and_a_page_to_browsers(server):
    pkg = server.create(run_id="page-run", target_profile="cmis", assessment_profile="tck")["id"]
    files = {"raw/logs/a b.log": b"alpha\n", "raw/logs/#2?.log": b"beta\n", "r/%20.md": b"# pct\n",
             "caf\u00e9/\u2603.txt": "snow\n".encode()}
    for path, data in files.items():
        assert server.put(pkg, path, data).status_code == 201
    finalize(server, pkg)
    server.http.post(f"{server.url}/v1/packages/{pkg}/holds", json={"reason": "legal <b>hold</b>"})
    url = f"{server.url}/v1/packages/{pkg}"
    for accept in (None, "*/*", "application/json"):
        r = server.http.get(url, headers={"Accept": accept} if accept else {})
        assert r.headers["Content-Type"] == "application/json" and r.json()["id"] == pkg
        assert "Accept" in r.headers["Vary"]
    r = server.http.get(url, headers={"Accept": BROWSER_ACCEPT})
    assert r.status_code == 200 and r.headers["Content-Type"] == "text/html; charset=utf-8"
    assert "Accept" in r.headers["Vary"]
    page = r.text
    assert "legal &lt;b&gt;hold&lt;/b&gt;" in page  # escaped, never markup
    assert "page-run" in page and "finalized" in page and "package.finalized" in page
    manifest_digest = server.http.get(url).json()["manifest_digest"]
    assert manifest_digest in page
    parser = Links()
    parser.feed(page)
    file_links = [urljoin(url, href) for cls, href in parser.links if cls == "file"]
    assert len(file_links) == len(files)
    got = {}
    for link in file_links:
        answer = server.http.get(link)
        assert answer.status_code == 200, link
        got[answer.content] = link
    assert set(got) == set(files.values())
    assert any(href.endswith("/archive") for _, href in parser.links)


def test_index_lists_recent_packages_filtered(server):
    a = server.create(run_id="run-a", target_profile="cmis", assessment_profile="tck")["id"]
    b = server.create(run_id="run-b", target_profile="webdav", assessment_profile="tck")["id"]
    page = server.http.get(f"{server.url}/").text
    assert page.index(b) < page.index(a)  # newest first
    filtered = server.http.get(f"{server.url}/", params={"target_profile": "cmis"}).text
    assert a in filtered and b not in filtered
    assert b in server.http.get(f"{server.url}/", params={"run_id": "run-b", "assessment_profile": "tck"}).text
    assert "no package matches" in server.http.get(f"{server.url}/", params={"run_id": "none"}).text
    assert_problem(server.http.get(f"{server.url}/", params={"status": "bogus"}), 422)
    ids = re.findall(r'class="package" href="[^"]*/v1/packages/(pkg_\w+)"', page)
    assert ids == [b, a]


def test_docs_load_their_assets_from_the_app(server):
    docs = server.http.get(f"{server.url}/docs").text
    assert "cdn" not in docs
    for asset in re.findall(r'(?:src|href)="([^"]+)"', docs):
        r = server.http.get(urljoin(f"{server.url}/docs", asset))
        assert r.status_code == 200 and len(r.content) > 1000, asset


def test_ingest_prints_the_public_url_not_the_address_it_used(settings, example_run, tmp_path):
    import json
    import subprocess
    import sys

    public = "https://artifacts.example.org"
    store = Store(Settings(**{**settings.__dict__, "public_url": public}))
    live = LiveServer(store)
    try:
        proc = subprocess.run([sys.executable, "-m", "artifact_store.cli", "ingest", str(example_run), "--url",
                               live.url, "--no-cache", "--quiet"], capture_output=True, text=True, timeout=120,
                              env={**os.environ, "XDG_CACHE_HOME": str(tmp_path)})
        assert proc.returncode == 0, proc.stderr
        result = json.loads(proc.stdout)
        assert result["url"] == f"{public}/v1/packages/{result['package_id']}"
    finally:
        live.close()
        store.close()
