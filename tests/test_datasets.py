"""Benchmark layouts: exact pair sets of the shared excerpts, loading, layout errors, non-local roots."""

from __future__ import annotations

import fsspec
import numpy as np
import pytest

from pipeline.evaluate import datasets, flowio
from pipeline.evaluate.datasets import LayoutError, list_pairs, load_pair
from pipeline.evaluate.pictures import encode_png

from .conftest import BENCHMARKS as BENCH

SINTEL = str(BENCH / "Sintel")
KITTI = str(BENCH / "KITTI")
MIDDLEBURY = str(BENCH / "middlebury")
CHAIRS = str(BENCH / "FlyingChairs_release")


def zero_flow_epe(sample: datasets.Sample) -> float:
    return float(np.hypot(sample.flow[..., 0], sample.flow[..., 1])[sample.valid].mean())


def put(uri: str, data: bytes) -> None:
    fsspec.filesystem("memory").pipe(uri, data)


def tiny_png(value: int, shape=(4, 6)) -> bytes:
    return encode_png(np.full(shape + (3,), value, np.uint8))


# ----------------------------------------------------------------------------- MPI-Sintel


@pytest.mark.parametrize("pass_name", ["clean", "final"])
@pytest.mark.usefixtures("shared_data")
def test_sintel_pairs_with_ground_truth_follow_frame_numbers(pass_name):
    records = datasets.list_sintel(SINTEL, pass_name=pass_name)
    assert [(r.sequence, r.frame) for r in records] == [
        ("alley_1", 1),
        ("alley_1", 2),
        ("alley_1", 3),
        ("cave_2", 2),
        ("market_5", 2),
    ]
    cave = records[3]
    assert cave.image0.endswith(f"training/{pass_name}/cave_2/frame_0002.png")
    assert cave.image1.endswith(f"training/{pass_name}/cave_2/frame_0003.png")
    assert cave.flow.endswith("training/flow/cave_2/frame_0002.flo")
    # Masks exist for frame 2 only in the excerpt: present there, None elsewhere.
    assert [r.occlusion is not None for r in records] == [False, True, False, True, True]
    assert [r.invalid is not None for r in records] == [False, True, False, True, True]
    assert records[1].occlusion.endswith("training/occlusions/alley_1/frame_0002.png")
    assert cave.pair_id == f"sintel/training/{pass_name}/cave_2/2"


@pytest.mark.usefixtures("shared_data")
def test_sintel_all_consecutive_pairs_without_requiring_ground_truth():
    records = datasets.list_sintel(SINTEL, require_gt=False)
    assert [(r.sequence, r.frame, r.flow is not None) for r in records] == [
        ("alley_1", 1, True),
        ("alley_1", 2, True),
        ("alley_1", 3, True),
        ("cave_2", 1, False),
        ("cave_2", 2, True),
        ("cave_2", 3, False),
        ("market_5", 1, False),
        ("market_5", 2, True),
        ("market_5", 3, False),
    ]


@pytest.mark.usefixtures("shared_data")
def test_sintel_samples_match_the_known_ground_truth():
    records = {r.pair_id: r for r in datasets.list_sintel(SINTEL)}
    for frame, expected in ((1, 2.803), (2, 2.983), (3, 3.120)):
        sample = load_pair(records[f"sintel/training/clean/alley_1/{frame}"])
        assert sample.image0.shape == (436, 1024, 3) and sample.image0.dtype == np.uint8
        assert sample.valid.all()  # all pixels count, as on the Sintel server
        assert zero_flow_epe(sample) == pytest.approx(expected, abs=5e-4)
    with_masks = load_pair(records["sintel/training/clean/alley_1/2"])
    assert with_masks.occlusion.dtype == bool
    assert with_masks.occlusion.mean() == pytest.approx(0.022, abs=5e-4)
    assert 0 < with_masks.invalid.sum() < 200  # a handful of pixels, reported apart from valid
    without = load_pair(records["sintel/training/clean/alley_1/1"])
    assert without.occlusion is None and without.invalid is None
    # image1 of pair 1 is image0 of pair 2: frames are looked up by number.
    np.testing.assert_array_equal(without.image1, with_masks.image0)


@pytest.mark.usefixtures("shared_data")
def test_sintel_test_split_and_layout_errors(memory_root):
    with pytest.raises(LayoutError, match=r"test/clean/<scene>/frame_NNNN\.png"):
        datasets.list_sintel(SINTEL, split="test", require_gt=False)
    with pytest.raises(LayoutError, match=rf"{KITTI}/training/clean/<scene>/frame_NNNN\.png"):
        datasets.list_sintel(KITTI)
    with pytest.raises(ValueError, match="pass_name: expected one of"):
        datasets.list_sintel(SINTEL, pass_name="albedo")
    put(f"{memory_root}/test/clean/ambush_1/frame_0001.png", tiny_png(1))
    put(f"{memory_root}/test/clean/ambush_1/frame_0002.png", tiny_png(2))
    with pytest.raises(ValueError, match="has no ground truth; pass require_gt=False"):
        datasets.list_sintel(memory_root, split="test")
    (record,) = datasets.list_sintel(memory_root, split="test", require_gt=False)
    assert record.flow is None and record.frame == 1
    sample = load_pair(record)
    assert sample.flow is None and sample.image1[0, 0, 0] == 2
    # Frames but no flow folder at all: the error names the ground truth that was expected.
    with pytest.raises(LayoutError, match=r"training/flow/<scene>/frame_NNNN\.flo"):
        put(f"{memory_root}/training/clean/ambush_1/frame_0001.png", tiny_png(1))
        datasets.list_sintel(memory_root)


@pytest.mark.usefixtures("shared_data")
def test_sintel_through_a_memory_filesystem_matches_local(memory_root):
    for rel in [
        "training/clean/cave_2/frame_0002.png",
        "training/clean/cave_2/frame_0003.png",
        "training/clean/cave_2/frame_0004.png",
        "training/flow/cave_2/frame_0002.flo",
        "training/occlusions/cave_2/frame_0002.png",
    ]:
        put(f"{memory_root}/Sintel/{rel}", (BENCH / "Sintel" / rel).read_bytes())
    (record,) = datasets.list_sintel(f"{memory_root}/Sintel")
    assert record.image0 == f"{memory_root}/Sintel/training/clean/cave_2/frame_0002.png"
    assert record.invalid is None
    remote = load_pair(record)
    local = load_pair(datasets.list_sintel(SINTEL)[3])
    for name in ("image0", "image1", "flow", "valid", "occlusion"):
        np.testing.assert_array_equal(getattr(remote, name), getattr(local, name))


# ----------------------------------------------------------------------------- KITTI


@pytest.mark.usefixtures("shared_data")
def test_kitti2015_pair_and_sample():
    (record,) = datasets.list_kitti2015(KITTI)
    assert (record.sequence, record.frame, record.flow_noc) == ("000000", 10, None)
    assert record.image1.endswith("training/image_2/000000_11.png")
    sample = load_pair(record)
    assert sample.image0.shape == (375, 1242, 3)
    assert sample.valid.mean() == pytest.approx(0.162, abs=5e-4)
    assert zero_flow_epe(sample) == pytest.approx(51.010, abs=5e-4)
    assert sample.occlusion is None  # no flow_noc in the excerpt


@pytest.mark.usefixtures("shared_data")
def test_kitti_noc_ground_truth_gives_the_occlusion_mask(memory_root):
    root = f"{memory_root}/KITTI"
    for rel in ["training/image_2/000000_10.png", "training/image_2/000000_11.png", "training/flow_occ/000000_10.png"]:
        put(f"{root}/{rel}", (BENCH / "KITTI" / rel).read_bytes())
    flow, valid = flowio.read_flow(str(BENCH / "KITTI" / "training" / "flow_occ" / "000000_10.png"))
    noc_valid = valid.copy()
    noc_valid[:, :600] = False  # pretend the left part is occluded
    flowio.write_flow(f"{root}/training/flow_noc/000000_10.png", flow, noc_valid)
    (record,) = datasets.list_kitti2015(root)
    assert record.flow_noc == f"{root}/training/flow_noc/000000_10.png"
    sample = load_pair(record)
    np.testing.assert_array_equal(sample.occlusion, valid & ~noc_valid)


@pytest.mark.usefixtures("shared_data")
def test_kitti_layout_errors():
    with pytest.raises(LayoutError, match=rf"{KITTI}/training/colored_0/NNNNNN_10\.png"):
        datasets.list_kitti2012(KITTI)
    with pytest.raises(LayoutError, match=r"testing/image_2/NNNNNN_10\.png"):
        datasets.list_kitti2015(KITTI, split="testing", require_gt=False)


def test_kitti2012_layout(memory_root):
    for n in (0, 1):
        put(f"{memory_root}/training/colored_0/{n:06d}_10.png", tiny_png(10))
        put(f"{memory_root}/training/colored_0/{n:06d}_11.png", tiny_png(11))
    flowio.write_flow(f"{memory_root}/training/flow_occ/000001_10.png", np.ones((4, 6, 2), np.float32))
    records = datasets.list_kitti2012(memory_root)
    assert [r.pair_id for r in records] == ["kitti2012/training/000001/10"]
    assert len(datasets.list_kitti2012(memory_root, require_gt=False)) == 2


# ----------------------------------------------------------------------------- Middlebury


@pytest.mark.usefixtures("shared_data")
def test_middlebury_pairs_colour_before_gray():
    records = datasets.list_middlebury(MIDDLEBURY)
    assert [r.sequence for r in records] == [
        "Dimetrodon",
        "Grove2",
        "Grove3",
        "Hydrangea",
        "RubberWhale",
        "Urban2",
        "Urban3",
        "Venus",
    ]
    folders = {r.sequence: r.image0.split("/")[-3] for r in records}
    assert folders["RubberWhale"] == folders["Urban3"] == "other-data"  # Urban3 is in both: colour wins
    assert folders["Venus"] == folders["Dimetrodon"] == "other-data-gray"
    assert all(r.frame == 10 and r.image1.endswith("frame11.png") and r.flow.endswith("flow10.flo") for r in records)


@pytest.mark.usefixtures("shared_data")
def test_middlebury_samples():
    records = {r.sequence: r for r in datasets.list_middlebury(MIDDLEBURY)}
    whale = load_pair(records["RubberWhale"])
    assert int((~whale.valid).sum()) == 3622
    assert zero_flow_epe(whale) == pytest.approx(1.256, abs=5e-4)
    venus = load_pair(records["Venus"])
    assert venus.image0.shape == (380, 420, 3)
    assert (venus.image0[..., 0] == venus.image0[..., 2]).all()
    for sequence in ("Dimetrodon", "Hydrangea"):
        sample = load_pair(records[sequence])
        assert 0 < (~sample.valid).mean() < 0.1 and np.abs(sample.flow).max() < 100


@pytest.mark.usefixtures("shared_data")
def test_middlebury_test_split_is_missing():
    with pytest.raises(LayoutError, match=r"eval-data/<seq>/frame10\.png"):
        datasets.list_middlebury(MIDDLEBURY, split="test", require_gt=False)


# ----------------------------------------------------------------------------- FlyingChairs


@pytest.mark.usefixtures("shared_data")
def test_flyingchairs_all_pairs_and_a_sample():
    records = datasets.list_flyingchairs(CHAIRS, split="all")
    assert [r.frame for r in records] == list(range(9))
    assert records[4].image0.endswith("data/00004_img1.ppm") and records[4].flow.endswith("data/00004_flow.flo")
    sample = load_pair(records[4])
    assert sample.image0.shape == (384, 512, 3)
    assert zero_flow_epe(sample) == pytest.approx(25.556, abs=5e-4)


@pytest.mark.usefixtures("shared_data")
def test_flyingchairs_split_file(memory_root):
    with pytest.raises(LayoutError, match=rf"{CHAIRS}/FlyingChairs_train_val\.txt"):
        datasets.list_flyingchairs(CHAIRS, split="val")
    source = BENCH / "FlyingChairs_release" / "data"
    for n in (1, 2, 3):  # the release numbers pairs from 00001
        for suffix in ("img1.ppm", "img2.ppm", "flow.flo"):
            put(f"{memory_root}/data/{n:05d}_{suffix}", (source / f"{n:05d}_{suffix}").read_bytes())
    put(f"{memory_root}/FlyingChairs_train_val.txt", b"1\n2\n1\n")
    assert [r.frame for r in datasets.list_flyingchairs(memory_root, split="train")] == [1, 3]
    (val,) = datasets.list_flyingchairs(memory_root, split="val")
    assert val.frame == 2 and val.split == "val"
    put(f"{memory_root}/FlyingChairs_train_val.txt", b"1\n2\n")
    with pytest.raises(LayoutError, match="pair 00003 is outside the split file's 2 lines"):
        datasets.list_flyingchairs(memory_root, split="train")


# ----------------------------------------------------------------------------- FlyingThings3D


def test_flyingthings3d_full_layout_as_raft_reads_it(memory_root):
    seq = "TRAIN/A/0000"
    for n in (6, 7, 8):
        put(f"{memory_root}/frames_cleanpass/{seq}/left/{n:04d}.png", tiny_png(n))
        put(f"{memory_root}/frames_cleanpass/{seq}/right/{n:04d}.png", tiny_png(99))
        for way, name in (("future", "Future"), ("past", "Past")):
            flow = np.full((4, 6, 2), n if way == "future" else -n, np.float32)
            flowio.write_flow(
                f"{memory_root}/optical_flow/{seq}/into_{way}/left/OpticalFlowInto{name}_{n:04d}_L.pfm", flow
            )
    forward = datasets.list_flyingthings3d(memory_root)
    assert [(r.sequence, r.frame) for r in forward] == [("A/0000", 6), ("A/0000", 7)]  # frame 9 does not exist
    assert forward[0].image1.endswith("frames_cleanpass/TRAIN/A/0000/left/0007.png")
    assert forward[0].flow.endswith("optical_flow/TRAIN/A/0000/into_future/left/OpticalFlowIntoFuture_0006_L.pfm")
    backward = datasets.list_flyingthings3d(memory_root, direction="backward")
    assert [(r.frame, r.direction) for r in backward] == [(7, "backward"), (8, "backward")]
    assert (
        backward[0].image1.endswith("left/0006.png")
        and backward[0].pair_id == "flyingthings3d/train/clean/A/0000/7/backward"
    )
    sample = load_pair(backward[1])
    assert sample.image0[0, 0, 0] == 8 and sample.image1[0, 0, 0] == 7 and (sample.flow == -8).all()
    assert len(datasets.list_flyingthings3d(memory_root, direction="both")) == 4
    with pytest.raises(LayoutError, match=r"frames_finalpass/TRAIN/<A\|B\|C>/<seq>/left/NNNN\.png"):
        datasets.list_flyingthings3d(memory_root, pass_name="final")


def test_flyingthings3d_subset_layout(memory_root):
    for n in range(4):
        put(f"{memory_root}/train/image_clean/left/{n:07d}.png", tiny_png(n))
    # Frames 0–2 form one sequence, frame 3 starts another: no flow links 2 and 3 backwards.
    for n in (0, 1, 2):
        flowio.write_flow(f"{memory_root}/train/flow/left/into_future/{n:07d}.flo", np.full((4, 6, 2), n, np.float32))
    for n in (1, 2):
        flowio.write_flow(f"{memory_root}/train/flow/left/into_past/{n:07d}.flo", np.full((4, 6, 2), -n, np.float32))
    put(f"{memory_root}/train/flow_occlusions/left/into_future/0000001.png", tiny_png(255))
    records = datasets.list_flyingthings3d(memory_root, direction="both")
    assert [(r.frame, r.direction) for r in records] == [
        (0, "forward"),
        (1, "forward"),
        (1, "backward"),
        (2, "backward"),
    ]
    sample = load_pair(records[1])
    assert sample.occlusion.all() and (sample.flow == 1).all()


# ----------------------------------------------------------------------------- HD1K and by name


@pytest.mark.usefixtures("shared_data")
def test_hd1k_layout(memory_root):
    for n in range(3):
        put(f"{memory_root}/hd1k_input/image_2/000000_{n:04d}.png", tiny_png(n))
    put(f"{memory_root}/hd1k_input/image_2/000001_0000.png", tiny_png(0))
    for n in (0, 1):
        flowio.write_flow(
            f"{memory_root}/hd1k_flow_gt/flow_occ/000000_{n:04d}.png", np.full((4, 6, 2), 0.5, np.float32)
        )
    records = list_pairs("hd1k", memory_root)
    assert [(r.sequence, r.frame) for r in records] == [("000000", 0), ("000000", 1)]
    sample = load_pair(records[1])
    assert sample.valid.all() and (sample.flow == 0.5).all() and sample.image1[0, 0, 0] == 2
    with pytest.raises(LayoutError, match=r"hd1k_input/image_2/SSSSSS_FFFF\.png"):
        list_pairs("hd1k", SINTEL)


@pytest.mark.usefixtures("shared_data")
def test_list_pairs_by_name():
    assert list_pairs("sintel", SINTEL, pass_name="final") == datasets.list_sintel(SINTEL, pass_name="final")
    assert sorted(datasets.BENCHMARKS) == [
        "flyingchairs",
        "flyingthings3d",
        "hd1k",
        "kitti2012",
        "kitti2015",
        "middlebury",
        "sintel",
    ]
    with pytest.raises(ValueError, match="benchmark: expected one of .* got 'sintle'"):
        list_pairs("sintle", SINTEL)


def test_load_pair_rejects_mismatched_sizes(memory_root):
    put(f"{memory_root}/training/clean/s/frame_0001.png", tiny_png(1))
    put(f"{memory_root}/training/clean/s/frame_0002.png", tiny_png(2))
    flowio.write_flow(f"{memory_root}/training/flow/s/frame_0001.flo", np.zeros((5, 6, 2), np.float32))
    (record,) = datasets.list_sintel(memory_root)
    with pytest.raises(ValueError, match=r"expected flow of size \(4, 6\) like image0"):
        load_pair(record)
