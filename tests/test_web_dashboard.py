"""The dashboard in a real browser: Debian's headless Chromium (/usr/bin/chromium, installed by
``scripts/ensure-deb.sh`` from ``make test``) driven by Playwright, against a real worker.

The page must show what the servers hold — table sizes, per-partition lag from the broker, dead
letters, the outbox — keep it current as new messages arrive, and answer a key search.
"""

from __future__ import annotations

import os
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg

from streams.kafka.admin import produce_envelopes, produce_raw
from tests.harness import Isolated
from tests.helpers import run, wait_for
from tests.reference import (
    PARTITIONS,
    TOPIC,
    create_topics,
    offsets,
    orders,
    push_counts,
    wait_committed_to_end,
)
from tests.test_web import BAD_RECORDS
from tests.web_helpers import web_worker

CHROMIUM = Path(os.environ.get("STREAMS_CHROMIUM", "/usr/bin/chromium"))  # as `make test` installs it
TOKEN = "dashboard-t0ken-123"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def test_dashboard_in_headless_chromium(isolated: Isolated, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    assert CHROMIUM.exists(), "Chromium missing: `make test` installs it (scripts/ensure-deb.sh)"
    iso = isolated
    create_topics(iso)
    worker, url = web_worker(iso, "w1", STREAMS_WEB_TOKEN=TOKEN)
    worker.start()
    worker.wait_ready()
    envelopes = orders(120)
    run(produce_envelopes(iso.settings, iso.topic(TOPIC), envelopes))
    run(produce_raw(iso.settings, iso.topic(TOPIC), BAD_RECORDS))
    wait_for(lambda: push_counts(iso)[1] >= 120, 90, what="120 seller pushes")
    wait_committed_to_end(iso)

    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=str(CHROMIUM), headless=True, args=FLAGS,
            viewport={"width": 1400, "height": 1050})
        try:
            page = browser.new_page()
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(url + "/")
            # the token: asked for, refused when wrong, accepted when right
            expect(page.locator("#auth")).to_be_visible(timeout=15_000)
            page.fill("#token", "not-the-token")
            page.click("#auth-form button")
            expect(page.locator("#auth-msg")).to_have_text("token refused")
            page.fill("#token", TOKEN)
            page.click("#auth-form button")
            expect(page.locator("#auth")).to_be_hidden()
            expect(page.locator("#ready")).to_have_text("ready", timeout=15_000)
            expect(page.locator("#app-id")).to_contain_text(iso.settings.app_id)

            # tables and their sizes
            row = page.locator('#tables tr[data-table="order-push-status"] [data-field="active_entries"]')
            expect(row).to_have_text("120", timeout=15_000)
            # (held here, not "active": Faust may leave a changelog created during start-up unassigned
            # until the next rebalance; undecodable records have no message id to remember)
            expect(page.locator('#tables tr[data-table="processed-push_seller"] [data-field="local_entries"]')
                   ).to_have_text("120")

            # lag per partition: the broker's offsets, and a line per partition in the chart
            ends, committed = _off_loop(offsets, iso)
            _expect_lag(page, iso, ends, committed)
            expect(page.locator("#lag-chart polyline")).to_have_count(PARTITIONS)
            expect(page.locator("#lag-summary")).to_contain_text("total lag 0")

            # dead letters
            dlq = page.locator(f'.dlq-topic[data-topic="{iso.topic(TOPIC)}.dlq"]')
            expect(dlq.locator('[data-field="count"]')).to_have_text("3", timeout=15_000)
            expect(dlq.locator("tbody tr")).to_have_count(3)
            expect(dlq).to_contain_text("not_json")

            # the outbox: missing table said as such, then live figures once it holds rows
            expect(page.locator('#outbox [data-field="missing"]')).to_contain_text("does not exist")
            from streams.outbox import migrate, write_message

            with psycopg.connect(iso.settings.dsn) as conn:
                migrate(conn)
                with conn.transaction():
                    for env in orders(2, "outbox"):
                        write_message(conn, env, topic=iso.topic(TOPIC))
            expect(page.locator('#outbox [data-field="pending"]')).to_have_text("2", timeout=15_000)

            # key search: a table key, then a processed message id
            order = envelopes[7]
            page.select_option("#search-table", "order-push-status")
            page.fill("#search-key", order.key)
            page.click("#search-go")
            expect(page.locator("#search-status")).to_contain_text("found in partition")
            expect(page.locator("#search-value")).to_contain_text(order.message_id)
            partition = int(re.search(r"partition (\d+)", page.locator("#search-status").inner_text()).group(1))
            assert partition == iso.sql("SELECT partition FROM seller_push_notifications WHERE message_id = %s",
                                        (order.message_id,))[0][0]
            page.select_option("#search-table", "processed-push_seller")
            page.fill("#search-key", order.message_id)
            page.click("#search-go")
            expect(page.locator("#search-value")).to_contain_text('"outcome": "handled"')
            page.select_option("#search-table", "order-push-status")
            page.fill("#search-key", "no-such-order")
            page.click("#search-go")
            expect(page.locator("#search-status")).to_contain_text("404")

            # the page keeps itself current: more orders arrive, sizes and offsets follow
            _off_loop(run, produce_envelopes(iso.settings, iso.topic(TOPIC), orders(30)))
            wait_for(lambda: push_counts(iso)[1] >= 150, 60, what="150 seller pushes")
            _off_loop(wait_committed_to_end, iso)
            expect(row).to_have_text("150", timeout=20_000)
            ends, committed = _off_loop(offsets, iso)
            _expect_lag(page, iso, ends, committed)
            points = page.locator("#lag-chart polyline").first.get_attribute("points").split()
            assert len(points) >= 3, f"the lag chart should accumulate samples, has {points}"

            page.select_option("#search-table", "order-push-status")
            page.fill("#search-key", order.key)
            page.click("#search-go")
            expect(page.locator("#search-value")).to_contain_text(order.message_id)
            shot = iso.artifacts / "dashboard.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            shutil.copy(shot, iso.artifacts.parent / "dashboard.png")
        finally:
            browser.close()
    assert not errors, f"JavaScript errors on the page: {errors}"
    worker.stop()


def _off_loop(fn, *args):
    """Run ``fn`` in another thread: Playwright's sync API keeps an event loop running in this one,
    and the Kafka helpers start their own with asyncio.run."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(fn, *args).result()


def _expect_lag(page, iso: Isolated, ends: dict[int, int], committed: dict[int, int]) -> None:
    """The lag table shows, per partition, the broker's committed and log-end offsets."""
    from playwright.sync_api import expect

    for partition, end in ends.items():
        cells = page.locator(f'#lag tr[data-partition="{iso.topic(TOPIC)}[{partition}]"] td')
        expect(cells.nth(2)).to_have_text(f"{committed.get(partition, 0):,}", timeout=20_000)
        expect(cells.nth(3)).to_have_text(f"{end:,}")
        expect(cells.nth(4)).to_have_text("0")
