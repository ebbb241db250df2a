"""``flowlabel scores``: ``jobs/scores.yaml`` → ``SCORES.md``, the benchmark table of the registered models.

Every row whose weights and data are available locally is scored through :func:`jobs.score_model.run_score`
(one run per model × checkpoint × benchmark × pass × settings, shared by the rows that need it);
every other row says "not run" and why, next to its reference number. A number over an excerpt of
a benchmark says so and is never set against a number over the full split.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import yaml

from models import REGISTRY
from pipeline.evaluate.datasets import PairRecord
from pipeline.evaluate.metrics import ScoreAccumulator
from pipeline.evaluate.scoring import benchmark_info, benchmark_overrides, list_benchmark, select_pairs, summarize
from pipeline.label.labeler import LabelerConfig
from pipeline.storage import filesystem, join, scrub, write_atomic
from pipeline.write.run_manifest import versions

from .cluster import ClusterOptions
from .options import add_cluster_options, add_storage_options, cluster_options
from .score_model import ScoreJob, ScoreResult, fmt, run_score

EXIT_OK, EXIT_FAILED = 0, 1
METRICS = {
    "epe": "EPE",
    "epe_image_mean": "EPE (image mean)",
    "fl_all": "Fl-all %",
    "px1": "<1 px %",
    "px3": "<3 px %",
    "px5": "<5 px %",
}
PERCENT_METRICS = ("fl_all", "px1", "px3", "px5")
TABLE_KINDS = ("compare", "measure")
SCOPES = ("full", "pairs")
ROW_FIELDS = (
    "model",
    "checkpoint",
    "benchmark",
    "split",
    "pass",
    "pairs",
    "settings",
    "metric",
    "reference",
    "source",
    "scope",
    "tolerance",
    "note",
)


# ----------------------------------------------------------------------------- config


@dataclass(frozen=True)
class BenchmarkData:
    """folder: below --data-root; full_pairs: split → pair count of the full split (fewer = an excerpt)."""

    folder: str
    full_pairs: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Row:
    """One line of a table; see the header of jobs/scores.yaml for each field."""

    model: str
    benchmark: str
    checkpoint: str | None = None
    split: str = ""
    pass_name: str = ""
    pairs: tuple[str, ...] = ()
    settings: Mapping[str, Any] = field(default_factory=dict)
    metric: str = ""
    reference: float | None = None
    source: str = ""
    scope: str = "pairs"
    tolerance: float | None = None
    note: str = ""

    @property
    def data(self) -> str:
        """Readable name of the data, e.g. 'MPI-Sintel training clean, alley_1/1'."""
        text = " ".join(p for p in (benchmark_info(self.benchmark).title, self.split, self.pass_name) if p)
        return text + (f", {' '.join(self.pairs)}" if self.pairs else "")


@dataclass(frozen=True)
class Table:
    """kind "compare": one metric per row against its reference; "measure": ``metrics`` per row, no reference."""

    title: str
    kind: str
    rows: tuple[Row, ...]
    note: str = ""
    metrics: tuple[str, ...] = ()


@dataclass(frozen=True)
class ScoresConfig:
    benchmarks: Mapping[str, BenchmarkData]
    tables: tuple[Table, ...]


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _parse_row(raw: Mapping[str, Any], defaults: Mapping[str, Any], where: str) -> Row:
    _expect(isinstance(raw, Mapping), f"{where}: expected a mapping, got {raw!r}")
    values = {**defaults, **raw}
    unknown = sorted(set(values) - set(ROW_FIELDS))
    _expect(not unknown, f"{where}: expected fields among {list(ROW_FIELDS)}, got unknown {unknown}")
    for name in ("model", "benchmark"):
        _expect(isinstance(values.get(name), str), f"{where}: expected a {name} name, got {values.get(name)!r}")
    _expect(values["model"] in REGISTRY, f"{where}: expected a registered model, got {values['model']!r}")
    info = benchmark_info(values["benchmark"])
    spec = REGISTRY[values["model"]]
    checkpoint = values.get("checkpoint")
    _expect(
        bool(checkpoint) == spec.needs_weights,
        f"{where}: {spec.name} {'needs' if spec.needs_weights else 'takes no'} checkpoint, got {checkpoint!r}",
    )
    pass_name = values.get("pass") or ""
    _expect(
        pass_name in info.passes or (pass_name == "" and info.passes == ("",)),
        f"{where}: expected pass among {[p for p in info.passes if p]} for {info.name}, got {pass_name!r}",
    )
    pairs = values.get("pairs") or ()
    pairs = (pairs,) if isinstance(pairs, str) else tuple(str(p) for p in pairs)
    scope = values.get("scope", "pairs")
    _expect(scope in SCOPES, f"{where}: scope: expected one of {list(SCOPES)}, got {scope!r}")
    metric = values.get("metric") or ""
    _expect(metric == "" or metric in METRICS, f"{where}: metric: expected one of {list(METRICS)}, got {metric!r}")
    settings = values.get("settings") or {}
    _expect(isinstance(settings, Mapping), f"{where}: settings: expected a mapping, got {settings!r}")
    return Row(
        model=values["model"],
        benchmark=values["benchmark"],
        checkpoint=checkpoint,
        split=str(values.get("split") or info.default_split),
        pass_name=pass_name,
        pairs=pairs,
        settings=dict(settings),
        metric=metric,
        reference=None if values.get("reference") is None else float(values["reference"]),
        source=str(values.get("source") or ""),
        scope=scope,
        tolerance=None if values.get("tolerance") is None else float(values["tolerance"]),
        note=str(values.get("note") or ""),
    )


def parse_config(data: Mapping[str, Any]) -> ScoresConfig:
    """Validate the YAML document of jobs/scores.yaml; ValueError names the bad entry."""
    _expect(
        isinstance(data, Mapping) and data.get("version") == 1,
        f"scores config: expected a mapping with version: 1, got {str(data)[:80]!r}",
    )
    benchmarks = {}
    for name, entry in (data.get("benchmarks") or {}).items():
        benchmark_info(name)
        _expect(
            isinstance(entry, Mapping) and isinstance(entry.get("folder"), str),
            f"benchmarks.{name}: expected {{folder: NAME, full_pairs: {{split: count}}}}, got {entry!r}",
        )
        full = {str(k): int(v) for k, v in (entry.get("full_pairs") or {}).items()}
        benchmarks[name] = BenchmarkData(entry["folder"], full)
    tables = []
    for t, raw in enumerate(data.get("tables") or ()):
        where = f"tables[{t}]"
        _expect(
            isinstance(raw, Mapping) and isinstance(raw.get("title"), str), f"{where}: expected a title, got {raw!r}"
        )
        kind = raw.get("kind", "compare")
        _expect(kind in TABLE_KINDS, f"{where}: kind: expected one of {list(TABLE_KINDS)}, got {kind!r}")
        metrics = tuple(raw.get("metrics") or ())
        _expect(
            kind == "compare" or (metrics and set(metrics) <= set(METRICS)),
            f"{where}: a measure table expects metrics among {list(METRICS)}, got {list(metrics)}",
        )
        defaults = raw.get("defaults") or {}
        rows = tuple(_parse_row(r, defaults, f"{where}.rows[{i}]") for i, r in enumerate(raw.get("rows") or ()))
        for i, row in enumerate(rows):
            _expect(row.benchmark in benchmarks, f"{where}.rows[{i}]: expected {row.benchmark!r} under benchmarks:")
            if kind == "compare":
                _expect(bool(row.metric), f"{where}.rows[{i}]: a compare row expects a metric, got none")
        tables.append(Table(raw["title"], kind, rows, str(raw.get("note") or "").strip(), metrics))
    _expect(bool(tables), "scores config: expected at least one table, got none")
    return ScoresConfig(benchmarks, tuple(tables))


def load_config(uri: str, storage_options: Mapping[str, Any] | None = None) -> ScoresConfig:
    fs, path = filesystem(uri, storage_options)
    return parse_config(yaml.safe_load(fs.cat_file(path)))


# ----------------------------------------------------------------------------- planning and running


@dataclass
class Outcome:
    """What became of one row: its values (metric → number) when scored, else ``reasons``."""

    row: Row
    settings: dict[str, Any]
    values: dict[str, float] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)
    pairs_scored: int = 0
    pairs_available: int | None = None
    full_pairs: int | None = None
    checkpoint_sha256: str = ""

    @property
    def ran(self) -> bool:
        return not self.reasons and bool(self.values)


def official_settings(row: Row) -> dict[str, Any]:
    """The settings a row runs with that differ from the model's defaults: the checkpoint's
    eval_config, its config for the benchmark and the row's own settings (the last two always
    shown, so that e.g. KITTI padding is visible)."""
    spec = REGISTRY[row.model]
    checkpoint = spec.find_checkpoint(row.checkpoint) if row.checkpoint else None
    chosen = benchmark_overrides(checkpoint, row.benchmark, row.settings)
    config = {**spec.default_config, **(checkpoint.eval_config if checkpoint else {}), **chosen}
    return {k: v for k, v in config.items() if k in chosen or spec.default_config.get(k, object()) != v}


class _Listings:
    """Pairs of each (benchmark, split, pass) under the data root, listed once; errors kept as text."""

    def __init__(self, config: ScoresConfig, data_root: str, storage_options: Mapping[str, Any]):
        self.config, self.data_root, self.so = config, data_root, storage_options
        self._cache: dict[tuple[str, str, str], list[PairRecord] | str] = {}

    def root(self, benchmark: str) -> str:
        return join(self.data_root, self.config.benchmarks[benchmark].folder)

    def get(self, benchmark: str, split: str, pass_name: str) -> list[PairRecord] | str:
        key = (benchmark, split, pass_name)
        if key not in self._cache:
            root = self.root(benchmark)
            fs, path = filesystem(root, self.so)
            if not fs.exists(path):
                self._cache[key] = f"benchmark data not available here ({root} not found)"
            else:
                try:
                    passes = (pass_name,) if pass_name else ()
                    self._cache[key] = list_benchmark(
                        benchmark, root, split=split, passes=passes, storage_options=self.so
                    )[pass_name]
                except (ValueError, FileNotFoundError) as exc:
                    self._cache[key] = f"benchmark data not usable here ({exc})"
        return self._cache[key]


def plan_row(row: Row, listings: _Listings, weights_dir: str, storage_options: Mapping[str, Any]) -> Outcome:
    """The row's outcome before running: its settings, pair counts, and the reasons it cannot run."""
    outcome = Outcome(row, official_settings(row))
    info = benchmark_info(row.benchmark)
    outcome.full_pairs = listings.config.benchmarks[row.benchmark].full_pairs.get(row.split)
    if row.split in info.server_splits:
        outcome.reasons.append(
            f"{row.split} split: no public ground truth; this number comes from the benchmark's evaluation server"
        )
        return outcome
    if row.checkpoint:
        fs, path = filesystem(join(weights_dir, row.checkpoint), storage_options)
        if not fs.exists(path):
            outcome.reasons.append(f"weights not available here ({row.checkpoint} not in {weights_dir})")
    records = listings.get(row.benchmark, row.split, row.pass_name)
    if isinstance(records, str):
        outcome.reasons.append(records)
        return outcome
    outcome.pairs_available = len(records)
    selected = select_pairs(records, row.pairs)
    if not selected:
        outcome.reasons.append(f"no pair matches {list(row.pairs)} in {listings.root(row.benchmark)}")
    if row.scope == "full":
        if outcome.full_pairs is None:
            outcome.reasons.append(
                "cannot tell whether the data is the full split: jobs/scores.yaml gives no "
                f"pair count for {row.benchmark} {row.split}"
            )
        elif len(records) < outcome.full_pairs:
            outcome.reasons.append(
                f"only an excerpt of the benchmark is available: {len(records)} of "
                f"{outcome.full_pairs} pairs, not comparable to a full-split number"
            )
    return outcome


def _run_key(row: Row) -> tuple:
    return (
        row.model,
        row.checkpoint,
        row.benchmark,
        row.split,
        row.pass_name,
        json.dumps(row.settings, sort_keys=True, default=str),
    )


def build_scores(
    config: ScoresConfig,
    *,
    data_root: str,
    weights_dir: str,
    cluster: ClusterOptions = ClusterOptions(),
    storage_options: Mapping[str, Any] | None = None,
) -> tuple[list[list[Outcome]], list[str]]:
    """Plan every row, run each needed score once, and fill in the outcomes (per table).

    Returns (outcomes per table, messages of runs that failed).
    """
    so = dict(storage_options or {})
    listings = _Listings(config, data_root, so)
    outcomes = [[plan_row(row, listings, weights_dir, so) for row in table.rows] for table in config.tables]
    groups: dict[tuple, list[Outcome]] = {}
    for outcome in (o for table in outcomes for o in table if not o.reasons):
        groups.setdefault(_run_key(outcome.row), []).append(outcome)

    failures = []
    for members in groups.values():
        row = members[0].row
        # One run covers every row of the group: all pairs if any row needs them all.
        wanted = {p for m in members for p in m.row.pairs}
        patterns = () if any(not m.row.pairs for m in members) else tuple(sorted(wanted))
        job = ScoreJob(
            benchmark=row.benchmark,
            root=listings.root(row.benchmark),
            split=row.split,
            passes=(row.pass_name,) if row.pass_name else (),
            pairs=patterns,
            labeler=LabelerConfig(
                model=row.model,
                overrides=row.settings,
                batch_size=1,
                checkpoint=join(weights_dir, row.checkpoint) if row.checkpoint else None,
            ),
            cluster=cluster,
            storage_options=so,
        )
        try:
            result = run_score(job)
        except Exception as exc:  # one failed run must not hide the others; reported and exit code 1
            message = f"{row.model} on {row.data}: {type(exc).__name__}: {scrub(str(exc), so)}"
            failures.append(message)
            for m in members:
                m.reasons.append(f"failed: {type(exc).__name__}: {scrub(str(exc), so)}")
            continue
        for m in members:
            _fill(m, result)
    return outcomes, failures


def _fill(outcome: Outcome, result: ScoreResult) -> None:
    items = result.pairs[outcome.row.pass_name]
    chosen = {r.pair_id for r in select_pairs([r for r, _ in items], outcome.row.pairs)}
    accumulator = ScoreAccumulator()
    accumulator.extend((r.pair_id, s) for r, s in items if r.pair_id in chosen)
    summary = summarize(accumulator)
    outcome.values = {name: summary[name] for name in METRICS}
    outcome.pairs_scored = summary["num_pairs"]
    outcome.checkpoint_sha256 = result.scores[0]["checkpoint_sha256"]
    outcome.settings = {k: result.scores[0]["settings"]["model_config"].get(k, v) for k, v in outcome.settings.items()}


# ----------------------------------------------------------------------------- rendering


def _number(value: float | None, metric: str) -> str:
    return fmt(value, 2 if metric in PERCENT_METRICS else 3)


def _settings_text(settings: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in settings.items()) or "defaults"


def _pairs_text(outcome: Outcome) -> str:
    n, full = outcome.pairs_scored, outcome.full_pairs
    if full is None:
        return f"{n}"
    if n < full:
        return f"{n} of {full} (excerpt)"
    return f"{n} (full split)"


def _status(outcome: Outcome) -> str:
    if outcome.reasons:
        return "not run: " + "; ".join(outcome.reasons)
    row = outcome.row
    notes = [row.note] if row.note else []
    if row.reference is not None and row.tolerance is not None:
        delta = abs(outcome.values[row.metric] - row.reference)
        verdict = "reproduced" if delta <= row.tolerance + 1e-12 else "NOT reproduced"
        notes.insert(
            0,
            f"{verdict} (|Δ| ≤ {row.tolerance:g})"
            if verdict == "reproduced"
            else f"{verdict} (|Δ| > {row.tolerance:g})",
        )
    if (
        outcome.full_pairs is not None
        and outcome.pairs_available is not None
        and outcome.pairs_available < outcome.full_pairs
    ):
        notes.append(f"excerpt: {outcome.pairs_scored} of {outcome.full_pairs} pairs")
    return "; ".join(notes) or "measured"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_compare(table: Table, outcomes: Sequence[Outcome]) -> list[str]:
    lines = [
        "| model | checkpoint | data | metric | settings (changed from defaults) | ours | reference | Δ | status "
        "| source |",
        "|---|---|---|---|---|---:|---:|---:|---|---|",
    ]
    for o in outcomes:
        row = o.row
        ours = _number(o.values[row.metric], row.metric) if o.ran else "not run"
        delta = f"{o.values[row.metric] - row.reference:+.3f}" if o.ran and row.reference is not None else "–"
        reference = f"{row.reference:g}" if row.reference is not None else "–"
        note = f"; {row.note}" if row.note and o.reasons else ""
        lines.append(
            "| "
            + " | ".join(
                _cell(c)
                for c in (
                    row.model,
                    row.checkpoint or "–",
                    row.data,
                    METRICS[row.metric],
                    _settings_text(o.settings),
                    ours,
                    reference,
                    delta,
                    _status(o) + note,
                    row.source or "–",
                )
            )
            + " |"
        )
    return lines


def render_measure(table: Table, outcomes: Sequence[Outcome]) -> list[str]:
    header = [
        "model",
        "data",
        "pairs",
        "settings (changed from defaults)",
        *(METRICS[m] for m in table.metrics),
        "status",
    ]
    lines = ["| " + " | ".join(header) + " |", "|---|---|---:|---|" + "---:|" * len(table.metrics) + "---|"]
    for o in outcomes:
        values = [_number(o.values.get(m), m) if o.ran else "not run" for m in table.metrics]
        status = _status(o) if o.reasons else (o.row.note or "measured")
        pairs = _pairs_text(o) if o.ran else "–"
        cells = (o.row.model, o.row.data, pairs, _settings_text(o.settings), *values, status)
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return lines


def render(
    config: ScoresConfig, outcomes: Sequence[Sequence[Outcome]], *, command: str, data_root: str, weights_dir: str
) -> str:
    """SCORES.md: a header saying how it was made, then one section per table."""
    v = versions()
    ran = sum(o.ran for table in outcomes for o in table)
    total = sum(len(table) for table in outcomes)
    lines = [
        "# Benchmark scores",
        "",
        f"Generated by `{command}` on {datetime.now(timezone.utc):%Y-%m-%d} (CPU, float32; torch {v['torch']}, "
        f"OpenCV {v['opencv']}, numpy {v['numpy']}, Ray {v['ray']}). Do not edit by hand: edit "
        "`jobs/scores.yaml` and regenerate.",
        "",
        f"Data: `{data_root}`; weights: `{weights_dir}`. {ran} of {total} rows were scored here; every other row "
        'says "not run" and why, and never carries a number of ours.',
        "",
        "**Excerpts.** Where only a few pairs of a benchmark are available (the shared test data are excerpts), "
        'a number over them says "N of M pairs (excerpt)": it describes those pairs only and is not comparable '
        "to a published number over the full split, which is therefore not run.",
        "",
        "Metrics: EPE = end-point error in pixels, averaged over all valid pixels of the pairs (pixel-weighted); "
        "EPE (image mean) = mean of per-pair EPEs; Fl-all = % of valid pixels with EPE > 3 px and > 5 % of the "
        "ground-truth magnitude; <k px = % of valid pixels with EPE below k px. Δ = ours − reference.",
    ]
    for table, table_outcomes in zip(config.tables, outcomes):
        lines += ["", f"## {table.title}", ""]
        if table.note:
            lines += [table.note, ""]
        render_table = render_compare if table.kind == "compare" else render_measure
        lines += render_table(table, table_outcomes)
        used = sorted({(o.row.checkpoint, o.checkpoint_sha256) for o in table_outcomes if o.ran and o.row.checkpoint})
        if used:
            lines += ["", "Checkpoints scored: " + ", ".join(f"`{name}` (sha256 `{sha}`)" for name, sha in used) + "."]
    return "\n".join(lines) + "\n"


def run_scores(
    config_uri: str,
    *,
    data_root: str,
    weights_dir: str,
    output: str,
    command: str,
    cluster: ClusterOptions = ClusterOptions(),
    storage_options: Mapping[str, Any] | None = None,
) -> tuple[list[list[Outcome]], list[str]]:
    """Load the config, score what can be scored, and write the table to ``output`` atomically."""
    config = load_config(config_uri, storage_options)
    outcomes, failures = build_scores(
        config, data_root=data_root, weights_dir=weights_dir, cluster=cluster, storage_options=storage_options
    )
    text = render(config, outcomes, command=command, data_root=data_root, weights_dir=weights_dir)
    fs, path = filesystem(output, storage_options)
    write_atomic(fs, path, text.encode())
    return outcomes, failures


# ----------------------------------------------------------------------------- CLI


def register(subparsers: argparse._SubParsersAction, help: str) -> None:
    """Add ``flowlabel scores`` (called by jobs.cli)."""
    p = subparsers.add_parser(
        "scores",
        help=help,
        description="Score every row of the config whose weights and data are available "
        "locally and write the markdown table; other rows say 'not run' and why.",
    )
    p.add_argument("--config", default="jobs/scores.yaml", help="table definition (default jobs/scores.yaml)")
    p.add_argument(
        "--data-root",
        default="data/benchmarks",
        help="folder holding the benchmarks in their official layouts (default %(default)s); rows whose "
        "data are not there say 'not run' and why",
    )
    p.add_argument(
        "--weights-dir",
        default="data/weights",
        help="folder holding checkpoint files by their official names (default %(default)s)",
    )
    p.add_argument("--output", default="SCORES.md", help="where the table goes (default SCORES.md)")
    add_storage_options(p)
    add_cluster_options(p)
    p.set_defaults(func=cmd_scores)


def cmd_scores(args: argparse.Namespace) -> int:
    command = "flowlabel scores " + " ".join(
        shlex.quote(a)
        for a in (
            "--config",
            args.config,
            "--data-root",
            args.data_root,
            "--weights-dir",
            args.weights_dir,
            "--output",
            args.output,
        )
    )
    try:
        outcomes, failures = run_scores(
            args.config,
            data_root=args.data_root,
            weights_dir=args.weights_dir,
            output=args.output,
            command=command,
            cluster=cluster_options(args),
            storage_options=args.storage_options,
        )
    except Exception as exc:
        message = scrub(str(exc), args.storage_options)
        print(f"flowlabel scores: error: {type(exc).__name__}: {message}", file=sys.stderr)
        return EXIT_FAILED
    ran = sum(o.ran for table in outcomes for o in table)
    total = sum(len(table) for table in outcomes)
    print(f"wrote {args.output}: {ran} of {total} rows scored, {total - ran} not run")
    for message in failures:
        print(f"FAILED {message}", file=sys.stderr)
    return EXIT_FAILED if failures else EXIT_OK
