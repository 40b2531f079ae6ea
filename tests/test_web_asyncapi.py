"""The worker serves its app's AsyncAPI document: ``/asyncapi.json`` behind the token, and a page
``/asyncapi`` that a real browser (Debian's headless Chromium, as in test_web_dashboard.py) renders."""

from __future__ import annotations

from pathlib import Path

from streams.asyncapi import ASYNCAPI_VERSION
from tests.harness import Isolated
from tests.reference import TOPIC, create_topics
from tests.test_web_dashboard import CHROMIUM, FLAGS
from tests.web_helpers import http, web_worker

TOKEN = "asyncapi-t0ken-456"


def test_the_document_and_its_page(isolated: Isolated, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    iso = isolated
    create_topics(iso)
    worker, url = web_worker(iso, "w1", STREAMS_WEB_TOKEN=TOKEN)
    worker.start()
    worker.wait_ready()

    assert http(f"{url}/asyncapi.json").status == 401
    reply = http(f"{url}/asyncapi.json", token=TOKEN)
    assert reply.status == 200
    doc = reply.json
    topic = iso.topic(TOPIC)
    assert doc["asyncapi"] == ASYNCAPI_VERSION and doc["info"]["title"] == iso.settings.app_id
    assert doc["channels"][topic]["address"] == topic  # the worker's own topic names (its prefix)
    [receive] = [op for op in doc["operations"].values() if op["action"] == "receive"]
    assert receive["bindings"]["kafka"]["groupId"]["enum"] == [iso.settings.app_id]
    (iso.artifacts / "asyncapi.json").write_bytes(reply.body)
    page_reply = http(f"{url}/asyncapi")  # the page itself holds no data: no token needed
    assert page_reply.status == 200 and "text/html" in page_reply.headers["Content-Type"]

    assert CHROMIUM.exists(), "Chromium missing: `make test` installs it (scripts/ensure-deb.sh)"
    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=str(CHROMIUM), headless=True, args=FLAGS,
            viewport={"width": 1300, "height": 1400})
        try:
            page = browser.new_page()
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(url + "/asyncapi")
            expect(page.locator("#auth")).to_be_visible(timeout=15_000)
            page.fill("#token", TOKEN)
            page.click("#auth-form button")
            expect(page.locator("#auth")).to_be_hidden()
            expect(page.locator("#title")).to_have_text(f"AsyncAPI · {iso.settings.app_id}")
            expect(page.locator("#channels tbody")).to_contain_text(topic)
            expect(page.locator("#channels tbody")).to_contain_text(topic + ".dlq")
            expect(page.locator("#operations tbody")).to_contain_text(iso.settings.app_id)
            order_placed = page.locator("#message-OrderPlaced")
            expect(order_placed).to_contain_text("seller_id")
            expect(order_placed).to_contain_text("event")
            expect(page.locator("#message-DeadLetter")).to_contain_text("dlq.reason")
            page.screenshot(path=str(iso.artifacts / "asyncapi-page.png"), full_page=True)
        finally:
            browser.close()
    assert errors == []
