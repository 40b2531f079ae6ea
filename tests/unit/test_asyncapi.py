"""The AsyncAPI 3.0 document of apps: kept in sync with the reference app, valid for the official parser."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from streams.asyncapi import document, render

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "docs" / "asyncapi" / "reference-app.json"


def _reference() -> dict:
    from agents import points, search_index, sms
    from agents.main import app

    return document([app, points.app, search_index.app, sms.app], title="reference-app")


def test_the_committed_document_is_the_reference_apps() -> None:
    assert COMMITTED.read_text() == render(_reference()), "run `make asyncapi` after changing the reference app"


def test_channels_messages_and_groups_of_the_reference_app() -> None:
    doc = _reference()
    channels = doc["channels"]
    assert set(channels) == {"orders.order-placed", "orders.order-placed.dlq", "points.grant-points",
                             "points.grant-points.dlq", "sellers.seller-notified"}
    assert channels["orders.order-placed"]["bindings"]["kafka"]["partitions"] == 6
    receivers = {op["bindings"]["kafka"]["groupId"]["enum"][0] for op in doc["operations"].values()
                 if op["action"] == "receive"}
    assert receivers == {"reference-app", "reference-app.points", "reference-app.search", "reference-app.sms"}
    outbox = doc["operations"]["reference-app.outbox.points.grant-points"]
    assert outbox["action"] == "send" and "outbox" in outbox["summary"]
    grant = doc["components"]["messages"]["GrantPoints"]
    assert grant["tags"] == [{"name": "command"}] and grant["headers"]["properties"]["kind"]["const"] == "command"
    payload = grant["payload"]["properties"]["payload"]
    assert payload == {"$ref": "#/components/schemas/GrantPoints"}
    assert doc["components"]["schemas"]["GrantPoints"]["properties"]["points"]["minimum"] == 0
    assert "#/$defs/" not in json.dumps(doc), "every reference resolves inside the document"


def test_retry_change_and_dead_letter_channels_pass_the_official_parser(tmp_path: Path) -> None:
    from tests.apps.cdc_app import app as cdc_app
    from tests.apps.jobs_app import app as jobs_app

    jobs, cdc = document([jobs_app]), document([cdc_app])
    assert jobs["channels"]["jobs.retry.2"]["bindings"]["kafka"]["partitions"] == 3
    assert jobs["operations"]["jobs-contract.run_job.retry-1"]["action"] == "receive"
    assert "DeadLetter" in jobs["channels"]["jobs.dlq"]["messages"]
    change = next(m for m in cdc["components"]["messages"].values() if "cdc" in [t["name"] for t in m.get("tags", [])])
    assert set(change["payload"]["properties"]) >= {"before", "after", "op", "source"}
    files = []
    for name, doc in (("reference", _reference()), ("jobs", jobs), ("cdc", cdc)):
        path = tmp_path / f"{name}.json"
        path.write_text(render(doc))
        files.append(str(path))
    broken = json.loads(render(jobs))
    broken["operations"]["jobs-contract.run_job"]["channel"]["$ref"] = "#/channels/missing"
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    done = subprocess.run(["bash", str(ROOT / "scripts" / "asyncapi-validate.sh"), *files, str(tmp_path / "broken.json")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr  # the broken one, and only it
    for path in files:
        assert f"{path}: valid AsyncAPI 3.0.0" in done.stdout, done.stdout
    assert f"{tmp_path / 'broken.json'}: INVALID" in done.stdout and "'#/channels/missing' does not exist" in done.stdout
