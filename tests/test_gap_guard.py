"""The gap guard's read-back on a real broker: a skipped range is returned whole or the guard
says it could not be read — never a part of it as if it were all."""

from __future__ import annotations

import pytest

from streams.consume.gap_guard import GapGuard, GapNotRead
from streams.kafka.admin import TopicSpec, ensure_topics, produce_envelopes
from streams.messages.envelope import event
from tests.harness import Isolated
from tests.helpers import run


def test_a_range_not_read_in_time_is_an_error_never_a_partial_answer(isolated: Isolated, caplog) -> None:
    iso = isolated
    topic = iso.topic("gaps")
    run(ensure_topics(iso.settings, [TopicSpec(topic, 1)]))
    run(produce_envelopes(iso.settings, topic, [event("Tick", {"n": i}, key="k") for i in range(50)]))
    guard = GapGuard("ticks", None, iso.settings, None)  # type: ignore[arg-type]  # a read-back needs the settings only

    async def scenario() -> None:
        try:
            assert [r.offset for r in await guard._read_range(topic, 0, 10, 40)] == list(range(10, 40))
            guard.read_deadline = 0.0  # no time to read anything: as if the broker never answered
            with pytest.raises(GapNotRead, match=r"gaps\[0\] offsets 10\.\.39"):
                await guard._read_range(topic, 0, 10, 40)
        finally:
            await guard.close()

    run(scenario())
    assert guard.incomplete_reads == guard.read_attempts
    assert caplog.text.count("reading back") == guard.read_attempts
