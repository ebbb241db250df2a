"""Optical-flow benchmarks in their official directory layouts: list frame pairs, load one pair.

Each ``list_*`` function takes the dataset root (a local path or any fsspec URI), lists the folder
tree once, and returns :class:`PairRecord` s sorted by sequence and frame. Ground truth is matched
to frames by its own frame number, never by list position (the shared Sintel excerpts have four
frames of cave_2 but ground truth for frame 2 only). :func:`load_pair` reads one record into arrays.

Layouts (``root`` is the folder named on the left):
  Sintel/          training/{clean,final}/<scene>/frame_%04d.png, training/flow/<scene>/frame_%04d.flo,
                   training/occlusions/<scene>/frame_%04d.png, training/invalid/<scene>/frame_%04d.png;
                   test/{clean,final}/… without ground truth.
  KITTI/ (2015)    training/image_2/%06d_10.png, _11.png, training/flow_occ/%06d_10.png,
                   training/flow_noc/%06d_10.png; testing/image_2/… without ground truth.
  KITTI/ (2012)    the same with colored_0/ instead of image_2/.
  FlyingChairs_release/  data/%05d_img1.ppm, _img2.ppm, _flow.flo, and the official split file
                   FlyingChairs_train_val.txt (line k is pair k: 1 = train, 2 = val).
  FlyingThings3D/  full dataset, the layout RAFT's datasets.py reads: frames_{clean,final}pass/TRAIN/<A|B|C>/<seq>/left/%04d.png,
                   optical_flow/TRAIN/<A|B|C>/<seq>/into_{future,past}/left/OpticalFlowInto{Future,Past}_%04d_L.pfm
                   (split "train" = TRAIN, "test" = TEST); or the DispNet/FlowNet2 subset:
                   {train,val}/image_{clean,final}/left/%07d.png, {train,val}/flow/left/into_{future,past}/%07d.flo,
                   {train,val}/flow_occlusions/left/into_future/%07d.png. Left camera only.
  middlebury/      other-data/<seq>/frame10.png, frame11.png (other-data-gray/ when the colour folder
                   lacks the sequence), other-gt-flow/<seq>/flow10.flo; eval-data[-gray]/ for the test split.
  HD1K/            hd1k_input/image_2/%06d_%04d.png, hd1k_flow_gt/flow_occ/%06d_%04d.png.

Sintel ``invalid`` masks: the MPI-Sintel server computes "EPE all" over every pixel, and RAFT's
``validate_sintel`` ignores these masks too (its valid mask is |flow| < 1000, true everywhere on
Sintel); UnFlow is an example of code that excludes them. We follow the official evaluation: the
``valid`` of a Sintel sample is the ground truth's own validity (every pixel), and the mask is
returned separately as ``Sample.invalid`` for a secondary score that excludes it.

KITTI occlusion: KITTI ships no occlusion masks; a pixel with ground truth in flow_occ but not in
flow_noc is occluded. ``Sample.occlusion`` is that mask when flow_noc is present, so EPE on
non-occluded pixels equals the devkit's evaluation against flow_noc.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np

from pipeline.evaluate.flowio import read_bytes, read_flow, read_image, read_mask
from pipeline.storage import filesystem


class LayoutError(ValueError):
    """A dataset root whose files do not match the benchmark's official layout."""


@dataclass(frozen=True)
class PairRecord:
    """One frame pair of a benchmark: where its files are, and nothing read yet.

    ``frame`` is the dataset's own number of ``image0`` (the number in its ground-truth file name).
    ``direction`` is "backward" only for FlyingThings3D into_past pairs, where image1 is the earlier frame.
    URIs are None where the dataset has no such file for this pair.
    """

    benchmark: str
    split: str
    pass_name: str
    sequence: str
    frame: int
    image0: str
    image1: str
    flow: str | None = None
    flow_noc: str | None = None
    occlusion: str | None = None
    invalid: str | None = None
    direction: str = "forward"

    @property
    def pair_id(self) -> str:
        """A stable, readable key, e.g. ``sintel/training/clean/alley_1/1``."""
        parts = [self.benchmark, self.split, self.pass_name, self.sequence, str(self.frame)]
        if self.direction != "forward":
            parts.append(self.direction)
        return "/".join(p for p in parts if p)


@dataclass(frozen=True, eq=False)
class Sample:
    """One pair's arrays: images H×W×3 uint8 RGB; flow H×W×2 float32 pixels; masks H×W bool.

    ``flow`` and ``valid`` are None without ground truth; ``occlusion`` (True = occluded) and
    ``invalid`` (True = excluded by the dataset, Sintel only) are None where the dataset has none.
    """

    record: PairRecord
    image0: np.ndarray
    image1: np.ndarray
    flow: np.ndarray | None = None
    valid: np.ndarray | None = None
    occlusion: np.ndarray | None = None
    invalid: np.ndarray | None = None


class _Tree:
    """The files under a dataset root, listed per sub-folder with one recursive listing each."""

    def __init__(self, root: str, storage_options: Mapping[str, Any] | None):
        self.root = root.rstrip("/")
        self.fs, path = filesystem(root, storage_options)
        self.base = path.rstrip("/")

    def uri(self, relative: str) -> str:
        return f"{self.root}/{relative}"

    def exists(self, relative: str) -> bool:
        return self.fs.exists(f"{self.base}/{relative}")

    def match(self, folder: str, pattern: str) -> dict[tuple, str]:
        """Files under ``folder`` whose path below it fully matches ``pattern`` → {groups: path below root}.

        Named groups ``n`` are converted to int (frame numbers); the key is the tuple of all groups.
        """
        prefix = f"{self.base}/{folder}/"
        regex = re.compile(pattern)
        found = {}
        for path in self.fs.find(prefix.rstrip("/")):
            if not path.startswith(prefix):
                continue
            m = regex.fullmatch(path[len(prefix) :])
            if m:
                key = tuple(int(v) if k == "n" else v for k, v in m.groupdict().items())
                found[key] = f"{folder}/{path[len(prefix) :]}"
        return found


def _choice(name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"{name}: expected one of {list(allowed)}, got {value!r}")


def _no_gt_check(benchmark: str, split: str, require_gt: bool) -> None:
    if require_gt:
        raise ValueError(f"{benchmark} split {split!r} has no ground truth; pass require_gt=False to list its pairs")


def _none_found(root: str, what: str, expected: str) -> LayoutError:
    return LayoutError(f"{root}: expected {what} at {root.rstrip('/')}/{expected}, found none")


def _gt(tree: _Tree, table: Mapping[tuple, str], key: tuple) -> str | None:
    return tree.uri(table[key]) if key in table else None


# ----------------------------------------------------------------------------- MPI-Sintel


def list_sintel(
    root: str,
    *,
    split: str = "training",
    pass_name: str = "clean",
    require_gt: bool = True,
    storage_options: Mapping[str, Any] | None = None,
) -> list[PairRecord]:
    """MPI-Sintel pairs frame n → n+1 per scene; with ``require_gt`` only those with frame_n.flo."""
    _choice("split", split, ("training", "test"))
    _choice("pass_name", pass_name, ("clean", "final"))
    tree = _Tree(root, storage_options)
    frame = r"(?P<scene>[^/]+)/frame_(?P<n>\d{4})"
    images = tree.match(f"{split}/{pass_name}", frame + r"\.png")
    if not images:
        raise _none_found(root, "MPI-Sintel frames", f"{split}/{pass_name}/<scene>/frame_NNNN.png")
    if split == "test":
        _no_gt_check("MPI-Sintel", split, require_gt)
        flows = occlusions = invalids = {}
    else:
        flows = tree.match(f"{split}/flow", frame + r"\.flo")
        occlusions = tree.match(f"{split}/occlusions", frame + r"\.png")
        invalids = tree.match(f"{split}/invalid", frame + r"\.png")
    records = []
    for scene, n in sorted(images):
        if (scene, n + 1) not in images or (require_gt and (scene, n) not in flows):
            continue
        key = (scene, n)
        records.append(
            PairRecord(
                benchmark="sintel",
                split=split,
                pass_name=pass_name,
                sequence=scene,
                frame=n,
                image0=tree.uri(images[key]),
                image1=tree.uri(images[(scene, n + 1)]),
                flow=_gt(tree, flows, key),
                occlusion=_gt(tree, occlusions, key),
                invalid=_gt(tree, invalids, key),
            )
        )
    if require_gt and not records:
        raise _none_found(root, "MPI-Sintel ground truth beside the frames", f"{split}/flow/<scene>/frame_NNNN.flo")
    return records


# ----------------------------------------------------------------------------- KITTI


def _list_kitti(
    benchmark: str, image_dir: str, root: str, split: str, require_gt: bool, storage_options: Mapping[str, Any] | None
) -> list[PairRecord]:
    _choice("split", split, ("training", "testing"))
    tree = _Tree(root, storage_options)
    images = tree.match(f"{split}/{image_dir}", r"(?P<id>\d{6})_(?P<n>\d{2})\.png")
    if not images:
        raise _none_found(root, f"{benchmark} frames", f"{split}/{image_dir}/NNNNNN_10.png")
    if split == "testing":
        _no_gt_check(benchmark, split, require_gt)
        occ = noc = {}
    else:
        occ = tree.match(f"{split}/flow_occ", r"(?P<id>\d{6})_(?P<n>10)\.png")
        noc = tree.match(f"{split}/flow_noc", r"(?P<id>\d{6})_(?P<n>10)\.png")
    records = []
    for scene, n in sorted(images):
        if n != 10 or (scene, 11) not in images or (require_gt and (scene, 10) not in occ):
            continue
        records.append(
            PairRecord(
                benchmark=benchmark,
                split=split,
                pass_name="",
                sequence=scene,
                frame=10,
                image0=tree.uri(images[(scene, 10)]),
                image1=tree.uri(images[(scene, 11)]),
                flow=_gt(tree, occ, (scene, 10)),
                flow_noc=_gt(tree, noc, (scene, 10)),
            )
        )
    if require_gt and not records:
        raise _none_found(root, f"{benchmark} ground truth beside the frames", f"{split}/flow_occ/NNNNNN_10.png")
    return records


def list_kitti2015(
    root: str, *, split: str = "training", require_gt: bool = True, storage_options: Mapping[str, Any] | None = None
) -> list[PairRecord]:
    """KITTI-2015 pairs NNNNNN_10 → _11 (image_2/), ground truth flow_occ/ (+ flow_noc/ when present)."""
    return _list_kitti("kitti2015", "image_2", root, split, require_gt, storage_options)


def list_kitti2012(
    root: str, *, split: str = "training", require_gt: bool = True, storage_options: Mapping[str, Any] | None = None
) -> list[PairRecord]:
    """KITTI-2012 pairs NNNNNN_10 → _11 (colored_0/), ground truth flow_occ/ (+ flow_noc/ when present)."""
    return _list_kitti("kitti2012", "colored_0", root, split, require_gt, storage_options)


# ----------------------------------------------------------------------------- FlyingChairs

CHAIRS_SPLIT_FILE = "FlyingChairs_train_val.txt"
_CHAIRS_SPLIT_CODES = {"train": 1, "val": 2}


def list_flyingchairs(
    root: str,
    *,
    split: str = "val",
    require_gt: bool = True,
    split_file: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> list[PairRecord]:
    """FlyingChairs pairs NNNNN_img1.ppm → _img2.ppm with NNNNN_flow.flo.

    ``split`` "train" / "val" select pairs by the official split file (default
    ``<root>/FlyingChairs_train_val.txt``; its line k belongs to pair number k, counted from 1);
    "all" lists every pair and needs no split file.
    """
    _choice("split", split, ("train", "val", "all"))
    tree = _Tree(root, storage_options)
    images = tree.match("data", r"(?P<n>\d{5})_img(?P<i>[12])\.ppm")
    flows = tree.match("data", r"(?P<n>\d{5})_flow\.flo")
    if not images:
        raise _none_found(root, "FlyingChairs frames", "data/NNNNN_img1.ppm")
    codes = None
    if split != "all":
        uri = split_file or tree.uri(CHAIRS_SPLIT_FILE)
        try:
            codes = np.array(read_bytes(uri, storage_options).split(), dtype=np.int64)
        except FileNotFoundError:
            raise LayoutError(
                f"{root}: split {split!r} needs the official split file at {uri}; it is missing"
            ) from None
    records = []
    for n, i in sorted(images):
        if i != "1" or (n, "2") not in images or (require_gt and (n,) not in flows):
            continue
        if codes is not None:
            if not 1 <= n <= len(codes):
                raise LayoutError(f"{root}: pair {n:05d} is outside the split file's {len(codes)} lines")
            if codes[n - 1] != _CHAIRS_SPLIT_CODES[split]:
                continue
        records.append(
            PairRecord(
                benchmark="flyingchairs",
                split=split,
                pass_name="",
                sequence="",
                frame=n,
                image0=tree.uri(images[(n, "1")]),
                image1=tree.uri(images[(n, "2")]),
                flow=_gt(tree, flows, (n,)),
            )
        )
    if require_gt and not flows:
        raise _none_found(root, "FlyingChairs ground truth", "data/NNNNN_flow.flo")
    return records


# ----------------------------------------------------------------------------- FlyingThings3D

_THINGS_DIRECTIONS = {"forward": ("future",), "backward": ("past",), "both": ("future", "past")}


def list_flyingthings3d(
    root: str,
    *,
    split: str = "train",
    pass_name: str = "clean",
    direction: str = "forward",
    require_gt: bool = True,
    storage_options: Mapping[str, Any] | None = None,
) -> list[PairRecord]:
    """FlyingThings3D left-camera pairs, from the full dataset (as RAFT reads it) or the DispNet/FlowNet2 subset.

    ``direction`` "forward" gives frame n → n+1 with into_future flow n; "backward" gives n → n−1 with
    into_past flow n (RAFT trains on both); "both" lists both. The layout is recognised from the root:
    ``frames_<pass>pass/`` means the full dataset (splits "train", "test"), ``<split>/image_<pass>/`` the
    subset (splits "train", "val").
    """
    _choice("pass_name", pass_name, ("clean", "final"))
    _choice("direction", direction, tuple(_THINGS_DIRECTIONS))
    tree = _Tree(root, storage_options)
    if tree.exists(f"frames_{pass_name}pass"):
        return _things_full(tree, root, split, pass_name, direction, require_gt)
    if tree.exists(f"{split}/image_{pass_name}"):
        return _things_subset(tree, root, split, pass_name, direction, require_gt)
    raise LayoutError(
        f"{root}: expected FlyingThings3D at {root.rstrip('/')}/frames_{pass_name}pass/TRAIN/<A|B|C>/<seq>/left/NNNN.png "
        f"(full dataset) or {root.rstrip('/')}/{split}/image_{pass_name}/left/NNNNNNN.png (subset), found neither"
    )


def _things_full(
    tree: _Tree, root: str, split: str, pass_name: str, direction: str, require_gt: bool
) -> list[PairRecord]:
    _choice("split", split, ("train", "test"))
    folder = split.upper()
    images = tree.match(f"frames_{pass_name}pass/{folder}", r"(?P<seq>[^/]+/[^/]+)/left/(?P<n>\d{4})\.png")
    if not images:
        raise _none_found(root, "FlyingThings3D frames", f"frames_{pass_name}pass/{folder}/<A|B|C>/<seq>/left/NNNN.png")
    flows = tree.match(
        f"optical_flow/{folder}",
        r"(?P<seq>[^/]+/[^/]+)/into_(?P<dir>future|past)/left/OpticalFlowInto(?:Future|Past)_(?P<n>\d{4})_L\.pfm",
    )
    records = []
    for way in _THINGS_DIRECTIONS[direction]:
        step = 1 if way == "future" else -1
        way_flows = {(seq, n): path for (seq, d, n), path in flows.items() if d == way}
        for seq, n in sorted(images):
            flow = _gt(tree, way_flows, (seq, n))
            if (seq, n + step) not in images or (require_gt and flow is None):
                continue
            records.append(
                PairRecord(
                    benchmark="flyingthings3d",
                    split=split,
                    pass_name=pass_name,
                    sequence=seq,
                    frame=n,
                    image0=tree.uri(images[(seq, n)]),
                    image1=tree.uri(images[(seq, n + step)]),
                    flow=flow,
                    direction="forward" if way == "future" else "backward",
                )
            )
    if require_gt and not records:
        expected = f"optical_flow/{folder}/<A|B|C>/<seq>/into_future/left/OpticalFlowIntoFuture_NNNN_L.pfm"
        raise _none_found(root, "FlyingThings3D ground truth", expected)
    return records


def _things_subset(
    tree: _Tree, root: str, split: str, pass_name: str, direction: str, require_gt: bool
) -> list[PairRecord]:
    _choice("split", split, ("train", "val"))
    images = tree.match(f"{split}/image_{pass_name}/left", r"(?P<n>\d{7})\.png")
    flows = tree.match(f"{split}/flow/left", r"into_(?P<dir>future|past)/(?P<n>\d{7})\.flo")
    occlusions = tree.match(f"{split}/flow_occlusions/left", r"into_(?P<dir>future|past)/(?P<n>\d{7})\.png")
    records = []
    for way in _THINGS_DIRECTIONS[direction]:
        step, back = (1, "past") if way == "future" else (-1, "future")
        for (n,) in sorted(images):
            # Subset frames carry no sequence folder; a flow in each direction between n and n+step
            # is the evidence that both frames belong to one sequence (mmflow's reader makes the same
            # check). Pairs are defined by flows here, so require_gt changes nothing.
            if (n + step,) not in images or (way, n) not in flows or (back, n + step) not in flows:
                continue
            records.append(
                PairRecord(
                    benchmark="flyingthings3d",
                    split=split,
                    pass_name=pass_name,
                    sequence="",
                    frame=n,
                    image0=tree.uri(images[(n,)]),
                    image1=tree.uri(images[(n + step,)]),
                    flow=tree.uri(flows[(way, n)]),
                    occlusion=_gt(tree, occlusions, (way, n)),
                    direction="forward" if way == "future" else "backward",
                )
            )
    if not records:
        raise _none_found(root, "FlyingThings3D subset flow", f"{split}/flow/left/into_future/NNNNNNN.flo")
    return records


# ----------------------------------------------------------------------------- Middlebury

_MIDDLEBURY_FOLDERS = {  # split: (colour frames, gray frames, ground truth)
    "training": ("other-data", "other-data-gray", "other-gt-flow"),
    "test": ("eval-data", "eval-data-gray", None),
}


def list_middlebury(
    root: str, *, split: str = "training", require_gt: bool = True, storage_options: Mapping[str, Any] | None = None
) -> list[PairRecord]:
    """Middlebury pairs frame10 → frame11, the pair its ground truth (flow10.flo) is defined for.

    Images come from the colour folder when it holds both frames of the sequence, else from the gray one.
    """
    _choice("split", split, tuple(_MIDDLEBURY_FOLDERS))
    colour_dir, gray_dir, gt_dir = _MIDDLEBURY_FOLDERS[split]
    tree = _Tree(root, storage_options)
    frame = r"(?P<seq>[^/]+)/frame(?P<n>\d{2})\.png"
    colour, gray = tree.match(colour_dir, frame), tree.match(gray_dir, frame)
    if not colour and not gray:
        raise _none_found(root, "Middlebury frames", f"{colour_dir}/<seq>/frame10.png (or {gray_dir}/)")
    if gt_dir is None:
        _no_gt_check("Middlebury", split, require_gt)
        flows = {}
    else:
        flows = tree.match(gt_dir, r"(?P<seq>[^/]+)/flow(?P<n>10)\.flo")
    records = []
    for seq in sorted({s for s, _ in colour} | {s for s, _ in gray}):
        images = colour if (seq, 10) in colour and (seq, 11) in colour else gray
        if (seq, 10) not in images or (seq, 11) not in images or (require_gt and (seq, 10) not in flows):
            continue
        records.append(
            PairRecord(
                benchmark="middlebury",
                split=split,
                pass_name="",
                sequence=seq,
                frame=10,
                image0=tree.uri(images[(seq, 10)]),
                image1=tree.uri(images[(seq, 11)]),
                flow=_gt(tree, flows, (seq, 10)),
            )
        )
    if require_gt and not records:
        raise _none_found(root, "Middlebury ground truth beside the frames", f"{gt_dir}/<seq>/flow10.flo")
    return records


# ----------------------------------------------------------------------------- HD1K


def list_hd1k(
    root: str, *, split: str = "training", require_gt: bool = True, storage_options: Mapping[str, Any] | None = None
) -> list[PairRecord]:
    """HD1K pairs SSSSSS_FFFF → SSSSSS_FFFF+1 with flow_occ/SSSSSS_FFFF.png (KITTI format)."""
    _choice("split", split, ("training",))
    tree = _Tree(root, storage_options)
    pattern = r"(?P<seq>\d{6})_(?P<n>\d{4})\.png"
    images = tree.match("hd1k_input/image_2", pattern)
    if not images:
        raise _none_found(root, "HD1K frames", "hd1k_input/image_2/SSSSSS_FFFF.png")
    flows = tree.match("hd1k_flow_gt/flow_occ", pattern)
    records = []
    for seq, n in sorted(images):
        if (seq, n + 1) not in images or (require_gt and (seq, n) not in flows):
            continue
        records.append(
            PairRecord(
                benchmark="hd1k",
                split=split,
                pass_name="",
                sequence=seq,
                frame=n,
                image0=tree.uri(images[(seq, n)]),
                image1=tree.uri(images[(seq, n + 1)]),
                flow=_gt(tree, flows, (seq, n)),
            )
        )
    if require_gt and not records:
        raise _none_found(root, "HD1K ground truth beside the frames", "hd1k_flow_gt/flow_occ/SSSSSS_FFFF.png")
    return records


# ----------------------------------------------------------------------------- by name, and loading

BENCHMARKS: Mapping[str, Callable[..., list[PairRecord]]] = MappingProxyType(
    {
        "sintel": list_sintel,
        "kitti2015": list_kitti2015,
        "kitti2012": list_kitti2012,
        "flyingchairs": list_flyingchairs,
        "flyingthings3d": list_flyingthings3d,
        "middlebury": list_middlebury,
        "hd1k": list_hd1k,
    }
)


def list_pairs(benchmark: str, root: str, **options: Any) -> list[PairRecord]:
    """The pairs of ``benchmark`` (a key of :data:`BENCHMARKS`) under ``root``; options go to its lister."""
    if benchmark not in BENCHMARKS:
        raise ValueError(f"benchmark: expected one of {sorted(BENCHMARKS)}, got {benchmark!r}")
    return BENCHMARKS[benchmark](root, **options)


def load_pair(record: PairRecord, storage_options: Mapping[str, Any] | None = None) -> Sample:
    """Read every file of ``record`` once into a :class:`Sample`; all arrays share one H×W."""
    image0 = read_image(record.image0, storage_options)
    image1 = read_image(record.image1, storage_options)
    flow = valid = occlusion = invalid = None
    if record.flow is not None:
        flow, valid = read_flow(record.flow, storage_options)
    if record.occlusion is not None:
        occlusion = read_mask(record.occlusion, storage_options)
    elif record.flow_noc is not None and valid is not None:
        _, valid_noc = read_flow(record.flow_noc, storage_options)
        if valid_noc.shape != valid.shape:
            raise ValueError(
                f"{record.flow_noc}: expected size {valid.shape} like {record.flow}, got {valid_noc.shape}"
            )
        occlusion = valid & ~valid_noc
    if record.invalid is not None:
        invalid = read_mask(record.invalid, storage_options)

    shape = image0.shape[:2]
    arrays = {"image1": image1, "flow": flow, "occlusion": occlusion, "invalid": invalid}
    for name, array in arrays.items():
        if array is not None and array.shape[:2] != shape:
            raise ValueError(
                f"{record.pair_id}: expected {name} of size {shape} like image0 ({record.image0}), got {array.shape[:2]}"
            )
    return Sample(
        record=record, image0=image0, image1=image1, flow=flow, valid=valid, occlusion=occlusion, invalid=invalid
    )
