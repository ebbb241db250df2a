"""``make demo``: the main job end to end on the embedded defaults.

Starts SeaweedFS on loopback, uploads a small corpus (generated videos with known motion in
two containers/codecs, plus an image sequence), labels it with DIS on a local Ray against
``s3://``, reads the result back with plain pyarrow, prints a per-video summary and writes
titled flow colour panels for a few pairs to ``demo-out/``.

Everything it needs is generated, so it runs from the repository alone. The image sequence is
the real Sintel alley_1 excerpt where the project's test data are present (``--sequence``
picks another folder), else a generated one with known motion.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads

from infra.local_s3 import LocalS3
from pipeline.evaluate.pictures import robust_max_radius, write_png
from pipeline.label.labeler import LabelerConfig
from pipeline.read.datasource import ReadOptions, read_unit
from pipeline.read.decode import DecodeOptions
from pipeline.read.plan import plan_units
from pipeline.read.sources import list_sources
from pipeline.schema import arrays_from_table
from pipeline.write.sinks import SinkOptions

from .label import LabelJob, format_label_summary, run_label
from .synthetic import Motion, translating_frames, write_image_sequence, write_translating_video
from .visualize import label_panel

# The real excerpt in the project's test data (FLOWLABEL_TEST_DATA, default ../shared/data beside the repository,
# as the tests find it), used when present.
TEST_DATA = Path(os.environ.get("FLOWLABEL_TEST_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
SINTEL_ALLEY = TEST_DATA / "benchmarks" / "Sintel" / "training" / "clean" / "alley_1"
# name: (height, width, frames, motion in px/frame)
DEMO_VIDEOS = {
    "pan_right.mp4": (240, 320, 24, Motion(2.0, 1.0)),  # H.264 in MP4
    "drift_left_odd.webm": (181, 241, 16, Motion(-1.5, 0.5)),  # VP9 in WebM, odd size
}
# The generated image sequence when the real one is absent: PNG frames, as a folder of stills arrives.
DEMO_SEQUENCE = ("alley_generated", (218, 512, 8, Motion(1.0, -0.5)))


def make_corpus(folder: Path) -> Path:
    videos = folder / "videos"
    videos.mkdir(parents=True)
    for seed, (name, (h, w, n, motion)) in enumerate(DEMO_VIDEOS.items()):
        write_translating_video(videos / name, h, w, n, motion, seed=seed)
    return videos


def make_sequence(folder: Path) -> Path:
    """The generated image sequence (:data:`DEMO_SEQUENCE`) under ``folder``."""
    name, (h, w, n, motion) = DEMO_SEQUENCE
    write_image_sequence(folder / name, translating_frames(h, w, n, motion, seed=len(DEMO_VIDEOS)))
    return folder / name


def known_motion_error(table, name: str, motion: Motion, margin: int = 16) -> float:
    """EPE of the labeled flow against the known translation, away from the borders (pixels)."""
    sources = [s for s in set(table["source"].to_pylist()) if s.rstrip("/").endswith(name)]
    rows = table.filter(pads.field("source").isin(sources))
    flow = arrays_from_table(rows)["flow"].astype(np.float32)[:, margin:-margin, margin:-margin]
    return float(np.linalg.norm(flow - np.array([motion.u, motion.v]), axis=-1).mean())


def write_panels(table, local_inputs: dict[str, Path], out_dir: Path, per_source: int = 2) -> list[Path]:
    """frame0 | flow with its colour key | occlusion | confidence, titled, for the first pairs of each source
    (the panels of ``flowlabel viz labels``)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for source in sorted(set(table["source"].to_pylist())):
        name = source.rstrip("/").rsplit("/", 1)[-1]
        rows = table.filter(pads.field("source") == source).sort_by("frame0").slice(0, per_source)
        sources, _ = list_sources([str(local_inputs[name])])
        [unit] = plan_units(sources, DecodeOptions(max_pairs=per_source))
        # Frame rows: at stride 1, row i is frame0 of pair i.
        frames = next(read_unit(unit, ReadOptions(decode=DecodeOptions(max_pairs=per_source))))["image"]
        arrays = arrays_from_table(rows)
        for i in range(rows.num_rows):
            flow = arrays["flow"][i].astype(np.float32)
            image = label_panel(
                flow,
                arrays["occlusion"][i],
                arrays["confidence"][i],
                frame0=frames[i],
                title=f"{name}: frames {rows['frame0'][i].as_py()}, {rows['frame1'][i].as_py()}",
                max_radius=robust_max_radius(flow),
            )
            path = out_dir / f"{Path(name).stem}_{rows['frame0'][i].as_py():04d}.png"
            write_png(str(path), image)
            written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out-dir", default="demo-out", help="where the flow colour panels go")
    parser.add_argument(
        "--sequence",
        type=Path,
        help="an image-sequence folder to label as well (default: the "
        "Sintel alley_1 excerpt if present, else a generated one)",
    )
    args = parser.parse_args(argv)
    if args.sequence is not None and not args.sequence.is_dir():
        print(f"demo: --sequence: expected a folder of frames, got {args.sequence}", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="flowlabel-demo-") as tmp, LocalS3(bucket="flowlabel-demo") as s3:
        import s3fs

        videos = make_corpus(Path(tmp))
        generated = args.sequence is None and not SINTEL_ALLEY.is_dir()
        sequence = make_sequence(Path(tmp)) if generated else args.sequence or SINTEL_ALLEY
        fs = s3fs.S3FileSystem(**s3.storage_options)
        fs.put(str(videos), f"{s3.bucket}/corpus/videos", recursive=True)
        fs.put(str(sequence), f"{s3.bucket}/corpus/sequences/{sequence.name}", recursive=True)
        print(f"SeaweedFS S3 on {s3.endpoint_url}; corpus uploaded to s3://{s3.bucket}/corpus/")

        out = f"s3://{s3.bucket}/labels/demo"
        job = LabelJob(
            inputs=(f"s3://{s3.bucket}/corpus/videos/", f"s3://{s3.bucket}/corpus/sequences/"),
            sink=SinkOptions(out),
            labeler=LabelerConfig(model="dis"),
            corpus="demo",
            storage_options=s3.storage_options,
        )
        result = run_label(job)
        print(format_label_summary(result, job.sink))

        table = pads.dataset(out.removeprefix("s3://"), filesystem=fs, format="parquet", partitioning="hive").to_table()
        print(f"read back {table.num_rows} rows with plain pyarrow from {out}")
        known = {**DEMO_VIDEOS, **(dict([DEMO_SEQUENCE]) if generated else {})}
        for name, (_, _, _, motion) in known.items():
            epe = known_motion_error(table, name, motion)
            print(f"known motion ({motion.u:+.1f}, {motion.v:+.1f}) px/frame in {name}: EPE {epe:.3f} px")
        local_inputs = {**{p.name: p for p in videos.iterdir()}, sequence.name: sequence}
        panels = write_panels(table, local_inputs, Path(args.out_dir))
        print(f"wrote {len(panels)} panels (frame0 | flow with colour key | occlusion | confidence) to {args.out_dir}/")
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
