"""Bad input: a clear error row for the input, full output for every other input."""

import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import s3fs

from jobs.cli import main
from jobs.label import LabelJob, run_label
from jobs.synthetic import Motion, write_translating_video
from models import CheckpointError
from pipeline.chunks import pair_rows
from pipeline.label.labeler import LabelerConfig
from pipeline.read.datasource import ReadOptions, UnitOutcome, read_unit
from pipeline.read.decode import DecodeOptions
from pipeline.read.plan import plan_units
from pipeline.read.sources import list_sources
from pipeline.write.sinks import SinkOptions

from . import badfiles
from .conftest import VIDEOS


def read_one(path, decode=DecodeOptions()):
    sources, errors = list_sources([str(path)])
    assert errors == []
    outcome, batches = UnitOutcome(), []
    for unit in plan_units(sources, decode):
        batches += list(read_unit(unit, ReadOptions(decode=decode), outcome=outcome))
    rows = [pair_rows(batch)[0] for batch in batches]
    return [(int(a), int(b)) for r in rows for a, b in zip(r["frame0"], r["frame1"])], outcome


@pytest.mark.parametrize(
    "make, error_type, stage",
    [
        (badfiles.zero_byte, "NoFramesError", "open"),
        (badfiles.moov_missing_mp4, "InvalidDataError", "open"),
        (badfiles.text_named_mp4, "InvalidDataError", "open"),
        (badfiles.image_named_mp4, "NotAVideoError", "open"),
        (badfiles.audio_only, "NoFramesError", "open"),
    ],
)
def test_unreadable_files_are_one_error_row_each(tmp_path, make, error_type, stage):
    pairs, outcome = read_one(make(tmp_path))
    assert pairs == []
    [(folder, record)] = outcome.records
    assert (folder, record.error_type, record.stage) == ("_errors", error_type, stage)
    assert outcome.status == "failed" and not outcome.retryable


def test_truncated_mp4_keeps_what_decodes_and_says_it_was_cut(tmp_path):
    pairs, outcome = read_one(badfiles.truncated_mp4(tmp_path))
    # What decodes before the cut is labeled; a frame lost to a decode error leaves a gap no pair spans.
    assert 0 < len(pairs) < 39 and pairs[0] == (0, 1) and all(b == a + 1 for a, b in pairs)
    assert [a for a, _ in pairs] == sorted({a for a, _ in pairs})
    [(folder, record)] = outcome.records
    assert folder == "_errors" and record.error_type in ("TruncatedError", "DecodeError")
    assert "40" in record.message or "failed to decode" in record.message


def test_corrupt_frame_mid_stream_leaves_a_gap_no_pair_spans(tmp_path):
    pairs, outcome = read_one(badfiles.corrupt_frame_mjpeg(tmp_path, corrupt=4, frames=10))
    assert pairs == [(0, 1), (1, 2), (2, 3), (5, 6), (6, 7), (7, 8), (8, 9)]
    [(folder, record)] = outcome.records
    assert record.error_type == "DecodeError" and "frames 4–4 missing" in record.message


def test_resolution_change_mid_stream_pairs_each_side(tmp_path):
    pairs, outcome = read_one(badfiles.resolution_change_ts(tmp_path))
    assert pairs == [(0, 1), (1, 2), (2, 3), (3, 4), (5, 6), (6, 7), (7, 8), (8, 9), (9, 10)]
    [(folder, record)] = outcome.records
    assert record.error_type == "FrameSizeChanged" and "(48, 64) → (64, 96)" in record.message


def test_mixed_image_sequence_converts_formats_and_reports_the_size_change(tmp_path):
    pairs, outcome = read_one(badfiles.mixed_sequence(tmp_path))
    assert pairs == [(0, 1), (1, 2), (2, 3), (3, 4)]  # gray, RGBA and 16-bit frames are converted
    [(folder, record)] = outcome.records
    assert record.error_type == "FrameSizeChanged" and "frame 5" in record.message


def test_max_pixels_downscales_or_rejects(tmp_path):
    path = tmp_path / "big.mp4"
    write_translating_video(path, 96, 128, 3, Motion(1, 0))
    pairs, outcome = read_one(path, DecodeOptions(max_pixels=3000))
    assert len(pairs) == 2 and outcome.records == []
    sources, _ = list_sources([str(path)])
    batch = next(read_unit(plan_units(sources, DecodeOptions())[0], ReadOptions(decode=DecodeOptions(max_pixels=3000))))
    h, w = batch["image"].shape[1:3]
    assert h * w <= 3000 and abs(w / h - 128 / 96) < 0.05
    pairs, outcome = read_one(path, DecodeOptions(max_pixels=3000, oversize="reject"))
    [(folder, record)] = outcome.records
    assert pairs == [] and record.error_type == "FrameTooLargeError" and "12288" in record.message


@pytest.mark.parametrize("h, w, max_pixels", [(1080, 1920, 307_200), (2160, 3840, 100_000), (747, 832, 10_000)])
def test_max_pixels_holds_after_the_rounding_of_the_short_side(h, w, max_pixels):
    fitted = DecodeOptions(max_pixels=max_pixels).fit(np.zeros((h, w, 3), np.uint8))
    fh, fw = fitted.shape[:2]
    assert fh * fw <= max_pixels and fh * fw > 0.98 * max_pixels  # within the limit, but barely smaller
    assert abs(fw / fh - w / h) < 0.01


@pytest.mark.slow
@pytest.mark.usefixtures("shared_data")
def test_bad_inputs_in_one_run_exit_2_with_everything_else_labeled(ray_local, tmp_path, capsys):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    write_translating_video(corpus / "good.mp4", 64, 80, 6, Motion(1, 0))
    bad = [
        badfiles.zero_byte(corpus),
        badfiles.truncated_mp4(corpus),
        badfiles.text_named_mp4(corpus),
        badfiles.resolution_change_ts(corpus),
    ]
    shutil.copy(VIDEOS / "broken__invalid-bitstream.webm", corpus)
    shutil.copy(VIDEOS / "bbb_sunflower_QCIF_30fps_mp4v_noaudio_1f.mp4", corpus)
    out = tmp_path / "out"
    code = main(["label", str(corpus), str(tmp_path / "does-not-exist.mp4"), "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 2
    for name in [p.name for p in bad] + ["broken__invalid-bitstream.webm", "does-not-exist.mp4"]:
        assert f"{name} [" in printed, name
    assert "skipped  " in printed and "bbb_sunflower" in printed
    table = pq.read_table(out)
    good = [s for s in table["source"].to_pylist() if s.endswith("good.mp4")]
    assert len(good) == 5
    import pandas as pd

    errors = pd.read_parquet(out / "_errors")
    assert set(errors.columns) >= {"source", "stage", "error_type", "message"} and len(errors) == 6


@pytest.mark.slow
def test_object_store_errors_are_rows(ray_local, local_s3, tmp_path):
    fs = s3fs.S3FileSystem(skip_instance_cache=True, **local_s3.storage_options)
    write_translating_video(tmp_path / "ok.mp4", 48, 64, 4, Motion(1, 0))
    fs.put(str(tmp_path / "ok.mp4"), f"{local_s3.bucket}/errs/ok.mp4")
    inputs = (
        f"s3://{local_s3.bucket}/errs/ok.mp4",
        f"s3://{local_s3.bucket}/errs/missing.mp4",
        "s3://no-such-bucket-flowlabel/x.mp4",
    )
    result = run_label(
        LabelJob(inputs=inputs, sink=SinkOptions(str(tmp_path / "out")), storage_options=local_s3.storage_options)
    )
    assert result.pairs == 3 and result.exit_code == 2
    assert sorted((r.source.rsplit("/", 1)[-1], r.error_type) for r in result.errors) == [
        ("missing.mp4", "FileNotFoundError"),
        ("x.mp4", "FileNotFoundError"),
    ]

    denied = {**local_s3.storage_options, "secret": "wrong-secret-value"}
    result = run_label(LabelJob(inputs=inputs[:1], sink=SinkOptions(str(tmp_path / "out2")), storage_options=denied))
    [record] = result.errors
    assert record.error_type == "PermissionError" and result.exit_code == 2
    assert "wrong-secret-value" not in record.message


def test_bad_checkpoint_fails_before_any_data_is_read(tmp_path):
    bad = tmp_path / "raft-small.pth"
    bad.write_bytes(b"not a checkpoint")
    out = tmp_path / "out"
    job = LabelJob(
        inputs=(str(tmp_path / "never-read.mp4"),),
        sink=SinkOptions(str(out)),
        labeler=LabelerConfig(model="raft_small", checkpoint=str(bad)),
    )
    with pytest.raises(CheckpointError):
        run_label(job)
    assert not out.exists()
    wrong_digest = LabelerConfig(model="raft_small", checkpoint=str(bad), checkpoint_sha256="0" * 64)
    with pytest.raises(CheckpointError, match="expected sha256"):
        run_label(LabelJob(inputs=job.inputs, sink=job.sink, labeler=wrong_digest))
    assert main(["label", str(tmp_path), "--out", str(out), "--model", "raft_small", "--checkpoint", str(bad)]) == 1
