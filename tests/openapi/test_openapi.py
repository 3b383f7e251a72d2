"""The committed OpenAPI document, checked by the tools its users reach for.

run.sh starts the server and sets TIDINGS_URL, TIDINGS_SERVICE_TOKEN and TIDINGS_OTHER_USER_TOKEN
(a user token for `openapi-client`).
"""

import importlib
import json
import os
import re
import subprocess
import sys
import urllib.request
import uuid

import pytest
from openapi_spec_validator import OpenAPIV31SpecValidator

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
DOCUMENT = os.path.join(ROOT, "openapi", "openapi.json")
URL = os.environ["TIDINGS_URL"]
USER = "openapi-client"


def committed():
    with open(DOCUMENT, encoding="utf-8") as f:
        return json.load(f)


def test_committed_document_is_valid_openapi_3_1():
    doc = committed()
    assert doc["openapi"].startswith("3.1")
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in OpenAPIV31SpecValidator(doc).iter_errors()]
    assert errors == [], "\n".join(errors)


def test_served_document_is_the_committed_one():
    with urllib.request.urlopen(f"{URL}/openapi.json", timeout=10) as r:
        assert json.load(r) == committed()


@pytest.fixture(scope="module")
def client_package(tmp_path_factory):
    """A client generated from the committed document, imported from a temporary directory."""
    out = tmp_path_factory.mktemp("client") / "tidings_client"
    generator = os.path.join(os.path.dirname(sys.executable), "openapi-python-client")
    run = subprocess.run(
        [generator, "generate", "--path", DOCUMENT, "--output-path", str(out), "--meta", "none"],
        capture_output=True, text=True, timeout=300,
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, f"openapi-python-client failed:\n{output}"
    # The one thing it may skip: the NDJSON stream's body, a content type it has no model for
    # (an endless stream is not something a generated client reads anyway).
    warnings = [w for w in re.findall(r"^WARNING .*?(?=^WARNING |^Skipping |\Z)", output, re.M | re.S)
                if "Unsupported content_type application/x-ndjson" not in w]
    assert warnings == [], "\n".join(warnings)
    sys.path.insert(0, str(out.parent))
    try:
        yield importlib.import_module("tidings_client")
    finally:
        sys.path.remove(str(out.parent))


def test_generated_client_publishes_and_lists(client_package):
    pkg = client_package
    api = importlib.import_module("tidings_client.api")
    publish = importlib.import_module("tidings_client.api.publishing.publish")
    listing = importlib.import_module("tidings_client.api.inbox.list_")
    unread = importlib.import_module("tidings_client.api.inbox.unread_count")
    models = importlib.import_module("tidings_client.models")
    assert api

    title = f"from the generated client {uuid.uuid4()}"
    service = pkg.AuthenticatedClient(base_url=URL, token=os.environ["TIDINGS_SERVICE_TOKEN"], raise_on_unexpected_status=True)
    # `topic=None` goes out as `"topic": null`, which the document allows next to `recipients`.
    body = models.PublishToRecipients(
        recipients=[USER], type_="openapi.check", title=title, topic=None,
        data=models.PublishToRecipientsDataType0.from_dict({"n": 1}),
    )
    assert body.to_dict()["topic"] is None
    created = publish.sync_detailed(client=service, body=body)
    assert created.status_code == 201, created.content
    receipts = created.parsed.notifications
    assert [r.recipient for r in receipts] == [USER]

    user = pkg.AuthenticatedClient(base_url=URL, token=os.environ["TIDINGS_OTHER_USER_TOKEN"], raise_on_unexpected_status=True)
    page = listing.sync_detailed(client=user, limit=10)
    assert page.status_code == 200, page.content
    mine = [n for n in page.parsed.notifications if n.title == title]
    assert len(mine) == 1
    assert mine[0].seq == receipts[0].seq
    assert mine[0].type_ == "openapi.check"
    assert mine[0].data.to_dict() == {"n": 1}
    counts = unread.sync(client=user)
    assert counts.unread >= 1 and counts.seq >= receipts[0].seq


def test_generated_client_reports_a_problem(client_package):
    """An error comes back as the documented problem document, parsed."""
    pkg = client_package
    listing = importlib.import_module("tidings_client.api.inbox.list_")
    user = pkg.AuthenticatedClient(base_url=URL, token=os.environ["TIDINGS_OTHER_USER_TOKEN"])
    resp = listing.sync_detailed(client=user, limit=0)
    assert resp.status_code == 400
    assert resp.parsed.status == 400
    assert resp.parsed.errors[0].field == "limit"
