"""Decoding and pairing on generated videos (known content) and on the real corpus in ../shared/data/videos."""

import itertools
import json
import os
from concurrent.futures import Executor, Future

import numpy as np
import pytest
from av.video.reformatter import VideoReformatter

from jobs.cluster import RemoteExecutor
from jobs.synthetic import Motion, translating_frames, write_video
from pipeline.chunks import pair_rows
from pipeline.read.datasource import ReadOptions, UnitOutcome, read_unit
from pipeline.read.decode import DecodeOptions, DecodeReport, decode_image, iter_video_frames, video_frame_times
from pipeline.read.plan import PlanOptions, ReadUnit, plan_units
from pipeline.read.sources import list_sources

from .conftest import BENCHMARKS, VIDEOS


def read_all(path, decode=DecodeOptions(), plan=PlanOptions(), read=None):
    sources, errors = list_sources([str(path)])
    assert errors == []
    records, batches = [], []
    for unit in plan_units(sources, decode, plan):
        outcome = UnitOutcome()
        batches += list(read_unit(unit, read or ReadOptions(decode=decode), outcome=outcome))
        records += outcome.records
    return batches, records


def as_pairs(batch):
    """A chunk of frame rows seen as its pairs: frame0/frame1/t0/t1 and image0/image1."""
    rows, index0, index1 = pair_rows(batch)
    return {**rows, "image0": batch["image"][index0], "image1": batch["image"][index1]}


def pairs_of(batches):
    return [
        (int(a), int(b)) for batch in batches for a, b in zip(*(pair_rows(batch)[0][k] for k in ("frame0", "frame1")))
    ]


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """One video per container/codec, odd sizes included: (path, frames written)."""
    folder = tmp_path_factory.mktemp("generated")
    specs = {"h264.mp4": (64, 96), "vp9_odd.webm": (61, 83), "mjpeg_odd.avi": (75, 99)}
    out = {}
    for name, (h, w) in specs.items():
        frames = translating_frames(h, w, 9, Motion(1.0, 0.5), seed=3)
        out[name] = (write_video(folder / name, frames), frames)
    return out


@pytest.mark.parametrize("name", ["h264.mp4", "vp9_odd.webm", "mjpeg_odd.avi"])
def test_generated_video_decodes_every_frame_once_in_order(generated, name):
    path, frames = generated[name]
    batches, records = read_all(path)
    assert records == []
    assert pairs_of(batches) == [(k, k + 1) for k in range(8)]
    batch = batches[0]
    # 8 pairs, 9 frames: each frame decoded once and sent once (frame k+1 of pair k is pair k+1's frame0)
    assert batch["image"].dtype == np.uint8 and batch["image"].shape == (9, *frames[0].shape)
    assert batch["frame"].tolist() == list(range(9)) and batch["pair_with"].tolist() == [*range(1, 9), -1]
    # lossy codecs: each decoded frame is closest to the frame encoded at its index
    encoded = np.stack(frames).astype(int)
    for k, image in enumerate(batch["image"].astype(int)):
        errors = np.abs(encoded - image).mean(axis=(1, 2, 3))
        assert errors.argmin() == k and (errors[k] < 12 or k == 8), errors  # the last frame shows the most new edge
    np.testing.assert_allclose(pair_rows(batch)[0]["t0"], np.arange(8) / 30, atol=1e-3)


def test_stride_max_pairs_and_max_side(generated):
    path, frames = generated["h264.mp4"]
    batches, _ = read_all(path, DecodeOptions(stride=3, max_pairs=4, max_side=48))
    assert pairs_of(batches) == [(0, 3), (1, 4), (2, 5), (3, 6)]
    assert batches[0]["image"].shape == (7, 32, 48, 3)  # frames 0–6, each once
    assert (batches[0]["source_height"][0], batches[0]["source_width"][0]) == (64, 96)


def test_fps_resampling_keeps_first_frame_at_each_tick(generated):
    path, _ = generated["h264.mp4"]  # 30 fps, 9 frames
    batches, _ = read_all(path, DecodeOptions(fps=10))
    assert pairs_of(batches) == [(0, 3), (3, 6)]


def test_chunks_cut_at_a_fixed_number_of_pairs(generated):
    path, _ = generated["h264.mp4"]
    pair_bytes = 2 * 64 * 96 * 3
    batches, _ = read_all(path, read=ReadOptions(chunk_bytes=3 * pair_bytes))
    assert [len(pair_rows(b)[1]) for b in batches] == [3, 3, 2]
    assert [b["frame"].tolist() for b in batches] == [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8]]
    assert [b["chunk"][0] for b in batches] == ["00000000-00000002", "00000003-00000005", "00000006-00000007"]


def test_image_sequence_pairs_and_times(shared_data):
    batches, records = read_all(BENCHMARKS / "Sintel" / "training" / "final" / "cave_2")
    assert records == []
    assert pairs_of(batches) == [(0, 1), (1, 2), (2, 3)]
    assert np.isnan(batches[0]["time"]).all()
    assert batches[0]["image"].shape == (4, 436, 1024, 3)


@pytest.fixture(scope="module")
def short_gop_video(tmp_path_factory):
    path = tmp_path_factory.mktemp("gop") / "gop8.mp4"
    return write_video(path, translating_frames(32, 48, 60, Motion(1.0, 0.0)), gop=8)


# Units planned: all pairs / at most 30 pairs (segments starting past pair 30 are not read at all).
@pytest.mark.parametrize("video, units_expected", [("short_gop", (4, 2)), ("var_fps", (2, 1))])
@pytest.mark.parametrize("decode", [DecodeOptions(), DecodeOptions(stride=2, fps=12), DecodeOptions(max_pairs=30)])
def test_split_video_gives_exactly_the_pairs_of_the_whole_video(
    request, short_gop_video, video, units_expected, decode
):
    """Keyframe-aligned segments (forced small here) reproduce the unsplit pairs and times."""
    if video == "var_fps":
        request.getfixturevalue("shared_data")
    path = short_gop_video if video == "short_gop" else VIDEOS / "var_fps_video.mp4"  # VFR, keyframes at 0, 250
    whole, _ = read_all(path, decode)
    split_plan = PlanOptions(segment_frames=12, split_bytes=0)
    sources, _ = list_sources([str(path)])
    units = plan_units(sources, decode, split_plan)
    # short_gop: keyframes every 8 frames, segments ≥ 12 frames → 0, 16, 32, 48
    assert len(units) == units_expected[decode.max_pairs is not None]
    parts, records = read_all(path, decode, split_plan)
    assert records == []
    assert pairs_of(parts) == pairs_of(whole)
    np.testing.assert_array_equal(
        np.concatenate([as_pairs(b)["t1"] for b in parts]), np.concatenate([as_pairs(b)["t1"] for b in whole])
    )
    np.testing.assert_array_equal(
        np.concatenate([as_pairs(b)["ordinal"] for b in parts]), np.arange(len(pairs_of(whole)))
    )


@pytest.mark.usefixtures("shared_data")
@pytest.mark.parametrize(
    "name, starts",
    [("bt601-525_480_interlaced_bff.ts", [0, 45, 89, 134, 180, 224, 270]), ("nasa_13013.mp4", [0, 240])],
)
@pytest.mark.parametrize("decode", [DecodeOptions(max_side=64), DecodeOptions(max_side=64, fps=2, stride=4)])
def test_real_videos_split_at_keyframes_give_the_pairs_of_the_whole(name, starts, decode):
    """MPEG-TS seeks by byte position and can land between keyframes; at 2 fps a pair of stride 4 spans
    more than the next segment. Either way a segment must read exactly its pairs."""
    path = VIDEOS / name
    split_plan = PlanOptions(segment_frames=40, split_bytes=0)
    sources, _ = list_sources([str(path)])
    assert [u.start for u in plan_units(sources, decode, split_plan)] == starts
    whole, _ = read_all(path, decode)
    parts, records = read_all(path, decode, split_plan)
    assert records == [] and len(pairs_of(whole)) > 10
    assert pairs_of(parts) == pairs_of(whole)
    np.testing.assert_array_equal(
        np.concatenate([as_pairs(b)["ordinal"] for b in parts]), np.arange(len(pairs_of(whole)))
    )


@pytest.mark.usefixtures("shared_data")
def test_frame_times_are_read_while_the_container_is_open():
    # The stream's time base read after the container closed was freed memory: about a third of the
    # probes gave garbage times (one unit, or segments that read nothing).
    with open(VIDEOS / "nasa_13013.mp4", "rb") as f:
        times, keyframes = video_frame_times(f)
    assert len(times) == 390 and times[-1] == pytest.approx(12.98, abs=0.01) and keyframes[:2] == [0, 240]
    for _ in range(40):
        with open(VIDEOS / "nasa_13013.mp4", "rb") as f:
            again = video_frame_times(f)
        churn = [bytearray(4096) for _ in range(50)]  # reuse the freed memory, as a busy reader does
        assert again == (times, keyframes) and churn


def test_long_videos_are_probed_by_ray_tasks_off_the_driver(ray_local, short_gop_video):
    remote = RemoteExecutor()
    assert remote.submit(lambda: os.getpid()).result() != os.getpid()  # a Ray worker, not the driver
    sources, _ = list_sources([str(short_gop_video)])
    split_plan = PlanOptions(segment_frames=12, split_bytes=0)
    units = plan_units(sources, DecodeOptions(), split_plan, probes=remote)
    assert [u.start for u in units] == [0, 16, 32, 48]
    assert units == plan_units(sources, DecodeOptions(), split_plan)  # the same units as the driver's threads


class LostWorkers(Executor):
    """Every call fails as a Ray task does when its worker dies."""

    def submit(self, fn, /, *args, **kwargs):
        future = Future()
        future.set_exception(RuntimeError("the worker died"))
        return future


def test_a_failed_probe_leaves_the_video_whole_for_its_read_task(short_gop_video):
    sources, _ = list_sources([str(short_gop_video)])
    split_plan = PlanOptions(segment_frames=12, split_bytes=0)
    assert plan_units(sources, DecodeOptions(), split_plan, probes=LostWorkers()) == [ReadUnit(sources[0])]


# Frames decoded by PyAV per file (../shared/data/videos/README.md) and display size (H, W).
REAL = {
    "nasa_13013.mp4": (390, (270, 480)),  # best() picks stream 3, not stream 0
    "dolbyVision-hdr.MOV": (4, (1280, 720)),  # rotation −90: portrait when displayed
    "big_buck_bunny_432_433.webm": (24, (720, 1280)),
    "bear-vp9-odd-dimensions.webm": (30, (121, 161)),
    "no_duration.webm": (74, (720, 1280)),
    "sample_with_colr_mdcv_and_clli.mp4": (60, (1080, 1920)),
    "vid1_camera-1.avi": (12, (747, 832)),
    "bt601-525_480_interlaced_bff.ts": (300, (480, 720)),
    "pigs_in_a_polka.gif": (30, (273, 314)),
    "portrait_4k60.mp4": (18, (3840, 2160)),
    "fire2.mp4": (25, (720, 1280)),
    "var_fps_video.mp4": (300, (128, 128)),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(REAL))
def test_real_corpus_one_pair_per_consecutive_frames_in_display_orientation(shared_data, name):
    frames, size = REAL[name]
    batches, records = read_all(VIDEOS / name, read=ReadOptions(chunk_bytes=2**40))
    assert records == []
    assert pairs_of(batches) == [(k, k + 1) for k in range(frames - 1)]
    assert {as_pairs(b)["image0"].shape[1:3] for b in batches} == {size}
    times = np.concatenate([as_pairs(b)["t0"] for b in batches])
    assert np.all(np.diff(times) > 0)


def test_one_converter_for_videos_of_other_sizes_and_formats_gives_their_own_frames(shared_data):
    """A read task shares its RGB converter among its clips: each video's frames are still exactly its own."""
    names = ["bear-vp9-odd-dimensions.webm", "var_fps_video.mp4", "bear-vp9-odd-dimensions.webm", "fire2.mp4"]

    def frames(name, to_rgb=None):
        with open(VIDEOS / name, "rb") as f:
            return [frame.image for frame in itertools.islice(iter_video_frames(f, DecodeReport(), to_rgb=to_rgb), 3)]

    shared = VideoReformatter()
    for name in names:
        ours, own = frames(name, shared), frames(name)
        assert len(ours) == 3 and all(np.array_equal(a, b) for a, b in zip(ours, own, strict=True))
    assert {frames(name)[0].shape for name in names} == {(121, 161, 3), (128, 128, 3), (720, 1280, 3)}


def test_rotation_matches_opencv_display_orientation(shared_data):
    cv2 = pytest.importorskip("cv2")
    batches, _ = read_all(VIDEOS / "fire2.mp4", DecodeOptions(max_pairs=1))
    capture = cv2.VideoCapture(str(VIDEOS / "fire2.mp4"))  # OpenCV applies the display matrix
    ok, bgr = capture.read()
    assert ok
    ours = as_pairs(batches[0])["image0"][0].astype(int)
    assert np.abs(ours - bgr[:, :, ::-1].astype(int)).mean() < 3
    assert np.abs(ours[::-1, ::-1] - bgr[:, :, ::-1].astype(int)).mean() > 20  # 180° would be visibly wrong


@pytest.mark.parametrize(
    "name, folder, error_type",
    [
        ("broken__invalid_userdata.mp4", "_errors", "NoFramesError"),  # header, no media data
        ("broken__invalid-bitstream.webm", "_errors", "NoFramesError"),  # every packet corrupt
        ("bbb_sunflower_QCIF_30fps_mp4v_noaudio_1f.mp4", "_skipped", "NoPairs"),  # one frame
    ],
)
def test_bad_and_short_inputs_are_recorded_not_raised(shared_data, name, folder, error_type):
    batches, records = read_all(VIDEOS / name)
    assert batches == []
    [(where, record)] = records
    assert (where, record.error_type) == (folder, error_type)
    assert record.source.endswith(name) and record.message


def test_not_a_video_is_an_open_error(tmp_path):
    fake = tmp_path / "notes.mp4"
    fake.write_text("this is text, not a video")
    batches, records = read_all(fake)
    [(where, record)] = records
    assert batches == [] and where == "_errors" and record.stage == "open"


def test_decode_image_gray_alpha_and_16_bit():
    cv2 = pytest.importorskip("cv2")
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    rgb = decode_image(cv2.imencode(".png", gray)[1].tobytes())
    assert rgb.shape == (3, 4, 3) and (rgb[..., 0] == gray).all() and (rgb[..., 2] == gray).all()
    bgra = np.dstack(
        [
            np.full((2, 2), 10, np.uint8),
            np.full((2, 2), 20, np.uint8),
            np.full((2, 2), 30, np.uint8),
            np.full((2, 2), 40, np.uint8),
        ]
    )
    assert decode_image(cv2.imencode(".png", bgra)[1].tobytes())[0, 0].tolist() == [30, 20, 10]
    deep = np.full((2, 2), 65535, np.uint16)
    assert decode_image(cv2.imencode(".png", deep)[1].tobytes()).max() == 255


def test_manifest_of_corpus_matches_readme(shared_data):
    """REAL above is taken from the corpus manifest: the folder holds exactly the files it describes, at their
    sizes, and every frame count in REAL is the one the manifest says PyAV decodes."""
    manifest = {f["file"]: f for f in json.loads((VIDEOS / "manifest.json").read_text())["files"]}
    on_disk = {p.name: p.stat().st_size for p in VIDEOS.iterdir() if p.name not in ("README.md", "manifest.json")}
    assert on_disk == {name: f["bytes"] for name, f in manifest.items()}
    assert {name: manifest[name]["decode"]["frames_decoded"] for name in REAL} == {n: r[0] for n, r in REAL.items()}


def test_interlaced_frames_are_deinterlaced(shared_data):
    """The interlaced MPEG-2 test pattern: combing (odd rows unlike their neighbours) is gone."""
    path = VIDEOS / "bt601-525_480_interlaced_bff.ts"

    def combing(image):
        gray = image.astype(np.float32).mean(axis=2)
        return float(np.abs(gray[1:-1] - 0.5 * (gray[:-2] + gray[2:])).mean())

    woven, _ = read_all(path, DecodeOptions(max_pairs=3, deinterlace=False))
    clean, records = read_all(path, DecodeOptions(max_pairs=3))
    assert records == [] and pairs_of(clean) == pairs_of(woven) == [(0, 1), (1, 2), (2, 3)]
    np.testing.assert_array_equal(as_pairs(clean[0])["t0"], as_pairs(woven[0])["t0"])
    assert combing(clean[0]["image"][1]) < 0.2 * combing(woven[0]["image"][1])


def test_small_units_share_read_tasks_and_large_ones_go_alone(tmp_path):
    """task_groups: consecutive small units (≤ small_unit_bytes, or of unknown size) share a task, at most
    units_per_task and no more than spreads them over the readers; a large unit and a segment go alone."""
    from pipeline.read.datasource import task_groups
    from pipeline.read.plan import ReadUnit
    from pipeline.read.sources import Source

    def unit(name, size, **kw):
        return ReadUnit(Source(uri=f"s3://b/{name}", kind="video", video_id=name, corpus="c", size=size), **kw)

    units = [unit(f"s{i}", 1000) for i in range(5)] + [unit("big", 10**9)] + [unit(f"m{i}", None) for i in range(3)]
    units.append(unit("seg", 10**9, start=300, stop=600, first=False))
    options = ReadOptions(units_per_task=3, small_unit_bytes=10**6)
    names = [[u.source.video_id for u in g] for g in task_groups(units, options, parallelism=1)]
    assert names == [["s0", "s1", "s2"], ["s3", "s4"], ["big"], ["m0", "m1", "m2"], ["seg"]]
    spread = [[u.source.video_id for u in g] for g in task_groups(units[:5], options, parallelism=4)]
    assert spread == [["s0", "s1"], ["s2", "s3"], ["s4"]]  # 5 small units over 4 readers: 2 per task


def test_coalesced_blocks_keep_every_chunk_whole_and_in_order(generated):
    """coalesce joins the chunks of several clips into blocks of up to max_bytes of frames: the same frame
    rows in the same order, a chunk never cut, and frames of another size start a new block."""
    from pipeline.chunks import iter_chunks
    from pipeline.read.datasource import coalesce

    read = ReadOptions(max_chunk_pairs=3)
    chunks = []
    for name in ("h264.mp4", "h264.mp4", "vp9_odd.webm"):
        chunks += read_all(generated[name][0], read=read)[0]
    chunk_bytes = chunks[0]["image"].nbytes
    blocks = list(coalesce(iter(chunks), max_bytes=2 * chunk_bytes))
    # Chunks of 4, 4 and 3 frames per clip; a block holds 8 h264 frames: (4+4) (3+4) (4+3), then the webm clip
    # (smaller frames) starts a new block: (4+4) (3).
    assert [len(list(iter_chunks(b))) for b in blocks] == [2, 2, 2, 2, 1]
    rejoined = [c for b in blocks for c in iter_chunks(b)]
    assert len(rejoined) == len(chunks)
    for got, expected in zip(rejoined, chunks):
        assert got.keys() == expected.keys()
        for key in expected:
            np.testing.assert_array_equal(got[key], expected[key])


def test_units_stream_with_a_bounded_lookahead():
    """iter_units plans as the sources come: the first unit leaves after a few sources are taken, not all
    (a manifest of millions of rows is never held whole), and a listing error passes through in place."""
    import itertools

    from pipeline.read.plan import PlanOptions, iter_units
    from pipeline.read.sources import ListingError, Source

    taken = []

    def sources():
        for i in itertools.count():
            taken.append(i)
            yield ListingError("bad", "E", "m") if i == 1 else Source(f"s3://b/{i}.mp4", "video", f"{i:016x}", "c")

    items = iter_units(sources(), DecodeOptions(), PlanOptions(probe_threads=2))
    first = list(itertools.islice(items, 3))
    assert [type(x).__name__ for x in first] == ["ReadUnit", "ListingError", "ReadUnit"]
    assert first[2].source.uri == "s3://b/2.mp4" and len(taken) <= 3 + 2 * 2
