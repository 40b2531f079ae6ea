"""Corrections to faust-streaming 0.15's consumer that the framework installs on each worker.

**Offsets acknowledged twice stall commits.** Faust's consumer finds the offset to
commit by merging the acknowledged offsets of a partition with the "gaps" it
recorded (offset jumps it treats as done) and taking the first run of
consecutive numbers. When the same offset is both in a gap and acknowledged —
which happens whenever :class:`~streams.processing.GapGuard` handles records Faust
skipped — the merged list holds it twice, the run breaks at the repeat, and each
commit advances only a few offsets (seen: a partition committing +10 offsets per
5 s while hundreds were handled, so a crash then repeats hundreds of records).
:func:`install` replaces ``Consumer._new_offset`` with the same computation over
distinct offsets.
"""

from __future__ import annotations

from typing import Any

from faust.utils.functional import consecutive_numbers


def install(consumer: Any) -> None:
    """Patch ``consumer`` (a Faust consumer) once."""
    if getattr(consumer, "_streams_fixes", False):
        return

    def _new_offset(tp: Any) -> int | None:
        acked = consumer._acked[tp]  # noqa: SLF001 - replacing Faust's own method
        if not acked:
            return None
        max_offset = max(acked)
        gaps = consumer._gap[tp]  # noqa: SLF001
        if gaps:
            candidates = sorted(gaps.overlap(0, max_offset), key=lambda iv: iv.begin)
            if candidates:
                extra = [o for iv in candidates for o in range(iv.begin, iv.end)]
                new_max = max(extra[-1], max_offset + 1)
                acked.extend(extra)
                gaps.chop(0, new_max)
        acked[:] = sorted(set(acked))  # the fix: an offset counted twice must not break the run
        committed = consumer._committed_offset[tp]  # noqa: SLF001
        if committed and min(acked) - committed > 1:
            return None
        batch = next(consecutive_numbers(acked))
        acked[: len(batch)] = []
        consumer._acked_index[tp].difference_update(batch)  # noqa: SLF001
        return batch[-1] + 1

    consumer._new_offset = _new_offset  # noqa: SLF001
    consumer._streams_fixes = True
