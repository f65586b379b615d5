"""The OpenAPI document: valid, committed, and true to what the API answers (schemathesis).

The committed copy (docs/openapi.json) must equal the served one: whoever changes
an endpoint regenerates it with ``python -m api.openapi > docs/openapi.json``.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

from openapi_spec_validator import validate

from tests.helpers import ROOT, ServerProcess

REGENERATE = "python -m api.openapi > docs/openapi.json"
MAX_EXAMPLES = 25  # per operation and phase: about a minute on the development machine

# application/x-tar is not a media type schemathesis serializes by itself: the body is bytes.
HOOKS = '''
import schemathesis


@schemathesis.serializer("application/x-tar")
def to_tar(ctx, value):
    return value if isinstance(value, bytes) else str(value).encode()
'''
# The server's own refusals (413 body cap, 414/431 head cap) are rejections too. Business rules no
# schema can say (an unknown retention class or cursor, "exactly one of") are not checked as
# positive_data_acceptance failures.
# The stateful phase follows the document's own links (api/openapi.py), which know that a created
# package has no manifest or archive until finalized; links schemathesis infers by parameter names
# do not, and report the designed 404 as "created resource not found".
CONFIG = '''
[checks.negative_data_rejection]
expected-statuses = ["400", "404", "405", "409", "413", "414", "415", "422", "431"]

[phases.stateful.inference]
algorithms = []
'''


def test_served_document_is_valid_openapi_3_1(server):
    document = server.http.get(f"{server.url}/openapi.json").json()
    assert document["openapi"] == "3.1.0"
    validate(document)
    text = json.dumps(document)
    assert '"format": null' not in text and '"pattern": null' not in text
    delete = document["paths"]["/v1/packages/{package_id}"]["delete"]
    assert [p for p in delete["parameters"] if p["name"] == "reason"][0]["required"] is True
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            for status, response in operation["responses"].items():
                if status == "default" or int(status) >= 400:
                    ref = response.get("$ref", "")
                    resolved = document["components"]["responses"][ref.rsplit("/", 1)[1]] if ref else response
                    assert list(resolved["content"]) == ["application/problem+json"], (method, path, status)
            assert "503" in operation["responses"], (method, path)


def test_committed_document_is_the_served_one(server):
    served = server.http.get(f"{server.url}/openapi.json").json()
    committed = json.loads((ROOT / "docs" / "openapi.json").read_text())
    assert committed == served, f"docs/openapi.json is out of date: regenerate it with `{REGENERATE}`"


def test_schemathesis_finds_no_failure(settings, tmp_path):
    server = ServerProcess({"ARTIFACT_STORE_DATA_DIR": str(tmp_path / "data"),
                            "ARTIFACT_STORE_DATABASE_URL": settings.database_url}, workers=1).start()
    (tmp_path / "st_hooks.py").write_text(HOOKS)
    (tmp_path / "schemathesis.toml").write_text(CONFIG)
    try:
        run = subprocess.run(
            [sys.executable, "-m", "schemathesis.cli", "--config-file", str(tmp_path / "schemathesis.toml"), "run",
             f"{server.url}/openapi.json", "--checks", "all",
             # allow_header_conformance: GET /v1/blobs/missing is routed to GET /v1/blobs/{sha256} (422, not a
             # digest), so Allow there names GET, which the /v1/blobs/missing path does not document.
             "--exclude-checks", "positive_data_acceptance,allow_header_conformance",
             "--max-examples", str(MAX_EXAMPLES), "--generation-deterministic", "--no-color"],
            capture_output=True, text=True, timeout=600, cwd=tmp_path,
            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path), "SCHEMATHESIS_HOOKS": "st_hooks"})
    finally:
        server.stop()
    tail = run.stdout[-6000:]
    cases = re.search(r"(\d+) generated, (\d+) passed", run.stdout)
    print(f"\nschemathesis: {cases.group(0) if cases else 'no summary'}")
    assert run.returncode == 0 and cases and cases.group(1) == cases.group(2), tail + run.stderr[-2000:]
