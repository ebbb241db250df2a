"""Spans (manifest start/end) without Ray: seeking decodes only the span, with the video's own frame
indices, in every container; planned segments compose with spans."""

import io

import numpy as np
import pytest

from jobs.synthetic import write_video
from pipeline.chunks import pair_rows
from pipeline.read.datasource import ReadOptions, UnitOutcome, read_unit
from pipeline.read.decode import DecodeOptions, DecodeReport, iter_video_frames
from pipeline.read.plan import PlanOptions, plan_units, span_indices
from pipeline.read.sources import Source, video_id_for

from .conftest import VIDEOS

FPS, FRAMES = 25, 60


@pytest.fixture(scope="module")
def noise_videos(tmp_path_factory):
    """60 frames of noise at 25 fps, a keyframe every 10 frames, in four containers (H.264 with B-frames)."""
    folder = tmp_path_factory.mktemp("spans")
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (48, 64, 3), np.uint8) for _ in range(FRAMES)]
    return {ext: write_video(folder / f"noise.{ext}", frames, fps=FPS, gop=10) for ext in ("mp4", "mkv", "ts", "webm")}


def decoded(path, start=None, end=None, report=None):
    with open(path, "rb") as f:
        return [
            (fr.index, fr.time, fr.image)
            for fr in iter_video_frames(f, report or DecodeReport(), start_time=start, end_time=end)
        ]


def check_span_matches_whole(path, spans):
    whole = decoded(path)
    for start, end in spans:
        want = [(i, t) for i, t, _ in whole if t >= start - 1e-6 and (end is None or t < end - 1e-6)]
        got = decoded(path, start, end)
        assert [(i, t) for i, t, _ in got] == want, (path.name, start, end)
        by_index = {i: image for i, _, image in whole}
        for i, _, image in got:
            np.testing.assert_array_equal(image, by_index[i])


# Starts on a keyframe (0.4), between keyframes, past the last keyframe, and a span holding no frame.
SPANS = [(0.4, 0.8), (0.37, 1.03), (0.01, 0.09), (1.5, None), (2.3, 5.0), (0.38, 0.3999)]


@pytest.mark.parametrize("ext", ["mp4", "mkv", "ts", "webm"])
def test_span_gives_the_frames_of_the_whole_decode(noise_videos, ext):
    check_span_matches_whole(noise_videos[ext], SPANS)


@pytest.mark.usefixtures("shared_data")
@pytest.mark.parametrize(
    "name, spans",
    [
        ("var_fps_video.mp4", [(1.0, 1.6), (4.05, 4.5), (9.0, None)]),  # variable frame rate
        ("bt601-525_480_interlaced_bff.ts", [(2.865, 3.0), (5.37, 5.6)]),  # MPEG-2 open GOPs: leading frames
        ("no_duration.webm", [(0.5, 1.0), (2.0, None)]),
    ],
)
def test_span_on_real_videos(name, spans):
    check_span_matches_whole(VIDEOS / name, spans)


class CountingFile(io.RawIOBase):
    """A file that counts the bytes read through it."""

    def __init__(self, path):
        self._f = open(path, "rb")  # noqa: SIM115 — a file object kept open for the reader, closed by close()
        self.bytes_read = 0

    def readable(self):
        return True

    def seekable(self):
        return True

    def readinto(self, buffer):
        n = self._f.readinto(buffer)
        self.bytes_read += n
        return n

    def seek(self, offset, whence=0):
        return self._f.seek(offset, whence)

    def tell(self):
        return self._f.tell()

    def close(self):
        self._f.close()
        super().close()


@pytest.fixture(scope="module")
def long_mp4(tmp_path_factory):
    """10 s of noise at 25 fps, a keyframe every second: about 660 KB."""
    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 255, (48, 64, 3), np.uint8) for _ in range(250)]
    return write_video(tmp_path_factory.mktemp("long") / "long.mp4", frames, fps=FPS, gop=25)


def test_mp4_span_reads_and_decodes_only_its_keyframe_interval(long_mp4):
    f, report = CountingFile(long_mp4), DecodeReport()
    frames = list(iter_video_frames(f, report, start_time=8.0, end_time=8.12))
    assert [fr.index for fr in frames] == [200, 201, 202]
    # From the keyframe at frame 200 to the first frame past the span (B-frames: a few more are in flight).
    assert report.decoded_frames <= 10
    # Opening probes the first frames (about 75 KB here); the frames before the span are not read.
    assert f.bytes_read < long_mp4.stat().st_size / 4


def test_other_containers_read_but_do_not_decode_before_the_keyframe(noise_videos):
    report = DecodeReport()
    frames = decoded(noise_videos["mkv"], 2.0, 2.12, report)
    assert [i for i, *_ in frames] == [50, 51, 52] and report.decoded_frames <= 10


def span_source(path, start, end, size):
    uri = str(path)
    return Source(uri, "video", video_id_for(uri, start, end), "c", size=size, start=start, end=end)


def read_pairs(units, decode):
    pairs, records = [], []
    for unit in units:
        outcome = UnitOutcome()
        for batch in read_unit(unit, ReadOptions(decode=decode), outcome=outcome):
            rows = pair_rows(batch)[0]
            pairs += list(
                zip(rows["frame0"].tolist(), rows["frame1"].tolist(), rows["t0"].tolist(), rows["ordinal"].tolist())
            )
        records += outcome.records
    return pairs, records


@pytest.mark.parametrize("decode", [DecodeOptions(), DecodeOptions(stride=2, fps=12), DecodeOptions(max_pairs=9)])
def test_planned_segments_of_a_span_give_the_pairs_of_the_span(noise_videos, decode):
    path = noise_videos["mp4"]
    start, end = 0.33, 2.05  # frames 9 (0.36 s) to 51 (2.04 s)
    split = plan_units(
        [span_source(path, start, end, size=path.stat().st_size)], decode, PlanOptions(segment_frames=12, split_bytes=0)
    )
    whole = plan_units([span_source(path, start, end, size=None)], decode)
    assert len(whole) == 1
    if decode.max_pairs is None:
        # Keyframes every 10 frames, segments of ≥ 12 frames inside [9, 52): starts 9, 30, 50.
        assert [u.start for u in split] == [9, 30, 50] and [u.first for u in split] == [True, False, False]
    split_pairs, split_records = read_pairs(split, decode)
    whole_pairs, whole_records = read_pairs(whole, decode)
    assert split_records == whole_records == []
    assert split_pairs == whole_pairs
    if decode == DecodeOptions():
        assert [(a, b) for a, b, _, _ in whole_pairs] == [(k, k + 1) for k in range(9, 51)]
        assert [o for *_, o in whole_pairs] == list(range(42))
    elif decode.fps:
        # 12 fps ticks from the span's first frame (0.36 s): 0.36, 0.443, 0.527, 0.61, 0.693
        # keep frames 9, 12, 14, 16, 18 (the first at or after each tick).
        assert [(a, b) for a, b, _, _ in whole_pairs[:3]] == [(9, 14), (12, 16), (14, 18)]
        assert whole_pairs[0][2] == pytest.approx(0.36)
    else:
        assert [(a, b) for a, b, _, _ in whole_pairs] == [(k, k + 1) for k in range(9, 18)]


def test_a_span_without_frames_is_skipped_not_failed(noise_videos):
    path = noise_videos["mp4"]
    units = plan_units([span_source(path, 10.0, 11.0, size=None)], DecodeOptions())
    pairs, records = read_pairs(units, DecodeOptions())
    assert pairs == []
    assert [(folder, r.error_type, r.message) for folder, r in records] == [
        ("_skipped", "NoPairs", "no frame in the span [10.0, 11.0) s")
    ]


def test_span_indices():
    times = [0.0, 0.04, 0.08, 0.12]
    assert span_indices(times, None, None) == (0, 4)
    assert span_indices(times, 0.04, 0.12) == (1, 3)
    assert span_indices(times, 0.05, None) == (2, 4)
    assert span_indices(times, 1.0, 2.0) == (4, 4)
