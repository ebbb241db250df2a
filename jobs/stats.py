"""The end-of-run summary of a label job: throughput per stage, actor use, bytes, errors.

Per-stage numbers come from Ray Data's own execution stats (``Dataset.get_stats_summary``,
filled in once the stream has been consumed); which GPU each labeler actor held comes from
the write summaries (the labeler stamps every chunk with its placement).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

from pipeline.write.exactly_once import UnitTracker

# Stage name → how Ray Data names its operator (the read operator is "Read" + datasource name).
STAGE_OPERATORS = {"read": "Read", "label": "Labeler", "write": "write_batch"}


def stage_stats(ds: Any) -> list[dict[str, Any]]:
    """One record per Ray Data operator of an executed dataset, in pipeline order.

    ``seconds``: first task start to last task end; ``busy_seconds``: sum of the tasks'
    wall times (for an actor pool: the time its actors spent on batches); ``rows_in`` /
    ``rows_out``: rows consumed / produced; ``bytes_out``: size of the blocks produced.
    Empty when Ray Data has no stats to give.
    """
    try:
        summary = ds.get_stats_summary()
    except Exception:  # noqa: BLE001 — stats are a report: their absence (e.g. via Ray Client) never fails a run
        return []
    chain = []
    while summary is not None:
        chain.append(summary)
        summary = summary.parents[0] if summary.parents else None
    out = []
    for level in reversed(chain):
        for op in level.operators_stats:
            stage = next((s for s, key in STAGE_OPERATORS.items() if key in op.operator_name), op.operator_name)
            out.append(
                {
                    "stage": stage,
                    "operator": op.operator_name,
                    "seconds": _round(op.time_total_s),
                    "busy_seconds": _round(op.wall_time.sum if op.wall_time else 0.0),
                    "cpu_seconds": _round(op.cpu_time.sum if op.cpu_time else 0.0),
                    "blocks": int(op.wall_time.count) if op.wall_time else 0,
                    "rows_in": int(op.total_input_num_rows or 0),
                    "rows_out": int(op.output_num_rows.sum) if op.output_num_rows else 0,
                    "bytes_out": int(op.output_size_bytes.sum) if op.output_size_bytes else 0,
                    "failed_tasks": int((level.extra_metrics or {}).get("num_tasks_failed", 0)),
                }
            )
    return out


def stamp_actor_seconds(stages: list[dict[str, Any]], actors: int) -> list[dict[str, Any]]:
    """One window's stage records with ``actor_seconds`` on the label stage: its span times the ``actors``
    that labeled in that window (summed over windows by :func:`merge_stages`)."""
    return [{**s, "actor_seconds": _round(s["seconds"] * actors)} if s["stage"] == "label" else s for s in stages]


def merge_stages(windows: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The stage records of a run's windows (one :func:`stage_stats` list each) as one list: per stage, in
    pipeline order, the sums of every count and of the seconds (the windows ran one after the other)."""
    merged: dict[str, dict[str, Any]] = {}
    for stages in windows:
        for s in stages:
            entry = merged.get(s["stage"])
            if entry is None:
                merged[s["stage"]] = dict(s)
                continue
            for key, value in s.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    entry[key] = _round(entry[key] + value) if isinstance(value, float) else entry[key] + value
    return list(merged.values())


def placements(summaries: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Labeler actors seen in the write summaries: {actor, node, gpu_ids, device, pairs}, by actor id."""
    actors: dict[str, dict[str, Any]] = {}
    for s in summaries:
        _place(actors, s)
    return [actors[k] for k in sorted(actors)]


def _place(actors: dict[str, dict[str, Any]], summary: Mapping[str, Any]) -> None:
    if summary.get("labeled_on"):
        where = json.loads(summary["labeled_on"])
        entry = actors.setdefault(where["actor"], {**where, "pairs": 0, "chunks": 0})
        entry["pairs"] += int(summary["pairs"])
        entry["chunks"] += 1


MAX_VIDEOS = 1000  # videos a run's summary lists one by one; <out>/_clips_summary/ has every one
VIDEO_SUMS = ("pairs", "pixels", "flow_magnitude_sum", "occluded_sum")


class RunTally:
    """A run's write summaries in, totals out: the driver keeps counts, the labeler actors and the first
    ``max_videos`` videos, not the summaries, so its memory does not grow with the corpus (but for the
    tracker's key per settled unit). ``tracker`` settles units as their chunks are committed."""

    def __init__(self, tracker: UnitTracker, max_videos: int = MAX_VIDEOS):
        self.tracker, self.max_videos = tracker, max_videos
        self.pairs = self.chunks = self.bytes_written = self.files = 0
        self.videos: dict[str, dict[str, Any]] = {}
        self.truncated = False  # more videos than max_videos were labeled
        self.actors: dict[str, dict[str, Any]] = {}

    def add(self, summary: Mapping[str, Any]) -> None:
        """One chunk's write summary (:data:`pipeline.write.sinks.SUMMARY_KEYS`); a chunk seen twice (a
        retried task) counts once."""
        if not self.tracker.add(summary):
            return
        self.pairs += int(summary["pairs"])
        self.chunks += 1
        self.bytes_written += int(summary["bytes_written"])
        self.files += int(summary["files"])
        _place(self.actors, summary)
        video = self.videos.get(summary["video_id"])
        if video is None and len(self.videos) >= self.max_videos:
            self.truncated = True
            return
        if video is None:
            video = self.videos[summary["video_id"]] = {
                **{k: summary[k] for k in ("video_id", "source", "corpus")},
                **{k: 0 for k in VIDEO_SUMS},
            }
        for key in VIDEO_SUMS:
            video[key] += summary[key]

    def per_video(self) -> list[dict[str, Any]]:
        """Per video of this run (the first ``max_videos``), by source: pairs, mean |flow| px and occluded
        fraction."""
        out = []
        for v in sorted(self.videos.values(), key=lambda v: v["source"]):
            pixels = max(v["pixels"], 1)
            out.append(
                {
                    **{k: v[k] for k in ("video_id", "source", "corpus", "pairs")},
                    "mean_flow_magnitude": v["flow_magnitude_sum"] / pixels,
                    "occluded_fraction": v["occluded_sum"] / pixels,
                }
            )
        return out

    def placements(self) -> list[dict[str, Any]]:
        """Labeler actors seen: {actor, node, gpu_ids, device, pairs, chunks}, by actor id."""
        return [self.actors[k] for k in sorted(self.actors)]


def run_stats(
    stages: list[dict[str, Any]],
    actors: list[dict[str, Any]],
    *,
    pairs: int,
    seconds: float,
    source_bytes: int,
    bytes_written: int,
    errors: int,
    actors_at_once: int | None = None,
) -> dict[str, Any]:
    """The summary stored in ``_flowlabel.json`` under ``stats`` and printed by the CLI.
    ``actors_at_once``: the most labeler actors any window had (default: all of ``actors``).

    A stage's ``pairs_per_second`` is the pairs it handled over its own span; the label
    stage's ``utilisation`` is its busy time over (span × actors): 1.0 means no actor idled.
    """
    stages = [dict(s) for s in stages]
    for s in stages:
        # The writer turns pairs into one summary row per chunk: count the pairs it consumed. The
        # reader's rows are frames (each sent once): it handled the run's pairs.
        handled = {"write": s["rows_in"], "read": pairs}.get(s["stage"], s["rows_out"])
        s["pairs_per_second"] = _round(handled / s["seconds"]) if s["seconds"] > 0 else None
    label = next((s for s in stages if s["stage"] == "label"), None)
    if label is not None and actors and label["seconds"] > 0:
        # Each window has actors of its own: the stage had at most ``actors_at_once`` at a time, and what they
        # could have worked is the sum over the windows.
        label["actors"] = actors_at_once or len(actors)
        capacity = label.get("actor_seconds") or label["seconds"] * len(actors)
        label["utilisation"] = _round(min(1.0, label["busy_seconds"] / capacity))
    return {
        "pairs": pairs,
        "seconds": _round(seconds),
        "pairs_per_second": _round(pairs / seconds) if seconds > 0 else None,
        "stages": stages,
        "actors": actors,
        "bytes": {
            "sources": int(source_bytes),
            "decoded": next((s["bytes_out"] for s in stages if s["stage"] == "read"), 0),
            "written": int(bytes_written),
        },
        "errors": errors,
        "failed_tasks": sum(s["failed_tasks"] for s in stages),
    }


def format_stats(stats: Mapping[str, Any]) -> list[str]:
    """Lines for the CLI summary: one per stage, one per device the labeler actors held, bytes."""
    if not stats.get("stages"):
        return []
    lines = [f"{'stage':<6} {'span s':>8} {'busy s':>8} {'pairs/s':>8}  operator"]
    for s in stats["stages"]:
        rate = "-" if s.get("pairs_per_second") is None else f"{s['pairs_per_second']:.2f}"
        extra = f", {s['actors']} actor(s), {s['utilisation']:.0%} busy" if "utilisation" in s else ""
        lines.append(
            f"{s['stage']:<6} {s['seconds']:>8.1f} {s['busy_seconds']:>8.1f} {rate:>8}  {s['operator']}{extra}"
        )
    lines += _actor_lines(stats.get("actors", []))
    b = stats["bytes"]
    lines.append(
        f"read {_size(b['sources'])} of sources ({_size(b['decoded'])} decoded), wrote {_size(b['written'])}; "
        f"{stats['failed_tasks']} task retries"
    )
    return lines


def _actor_lines(actors: list[dict[str, Any]]) -> list[str]:
    """One line per (node, GPUs, device): each window of a run starts actors of its own on the same devices."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for a in actors:
        gpus = ",".join(str(g) for g in a["gpu_ids"]) or "none"
        groups.setdefault((a["node"], gpus, a["device"]), []).append(a)
    lines = []
    for (node, gpus, device), group in groups.items():
        who = f"actor {group[0]['actor'][:8]}" if len(group) == 1 else f"{len(group)} actors"
        lines.append(f"{who} on {node}: GPU {gpus} → {device}, {sum(a['pairs'] for a in group)} pairs")
    return lines


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _round(value: float) -> float:
    return round(float(value), 3) if math.isfinite(value) else value
