"""Exactly-once bookkeeping on the driver: which units are settled, which chunks are committed.

A unit is settled when a marker ``_units/<unit>.json`` exists. Read tasks write it for units
that reach no writer (bad input, nothing to label, everything already committed); the
driver writes it for the others, once the unit's last chunk has announced the unit's chunk
list and every chunk in it is committed. Re-runs skip settled units at planning time and
skip committed chunks inside unsettled ones, so a job killed at any moment and re-run ends
with exactly the rows of an uninterrupted run.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any


class UnitTracker:
    """Follows write summaries (video_id, chunk, unit, unit_chunks) and settles units.

    ``committed``: video_id → chunks already committed when the run started.
    ``settle(unit, chunks)`` is called once per unit whose chunks are all committed.
    """

    def __init__(self, committed: Mapping[str, frozenset[str]], settle: Callable[[str, list[str]], None]):
        self._committed = {video: set(chunks) for video, chunks in committed.items()}
        self._waiting: dict[str, tuple[str, list[str]]] = {}
        self._settle = settle
        self.settled: list[str] = []

    def add(self, summary: Mapping[str, Any]) -> None:
        video = summary["video_id"]
        self._committed.setdefault(video, set()).add(summary["chunk"])
        if summary.get("unit_chunks"):
            self._waiting[summary["unit"]] = (video, json.loads(summary["unit_chunks"]))
        # Summaries of one unit may arrive in any order: re-check the waiting units of this video.
        for unit, (unit_video, chunks) in list(self._waiting.items()):
            if unit_video == video and self._committed[video].issuperset(chunks):
                del self._waiting[unit]
                self._settle(unit, chunks)
                self.settled.append(unit)

    @property
    def waiting(self) -> list[str]:
        """Units whose last chunk arrived but some other chunk did not (should be none at the end)."""
        return sorted(self._waiting)
