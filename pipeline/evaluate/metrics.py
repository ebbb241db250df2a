"""Flow-accuracy metrics per frame pair, and their aggregation with each benchmark's official averaging.

Per pair, :func:`pair_stats` reduces full-resolution arrays to a small :class:`PairStats` of sums
and counts (picklable, JSON-able), so the scoring job can run it next to the model on Ray and
reduce on the driver with :class:`ScoreAccumulator`.

Averaging conventions (both are reported, under different names):
  ``epe``             pixel-weighted: total end-point error over all valid pixels of the split divided
                      by their number. This is what the MPI-Sintel server reports ("EPE all") and what
                      the KITTI devkit reports; Fl-all is likewise outliers / valid pixels of the split.
  ``epe_image_mean``  mean over pairs of each pair's mean EPE, the number RAFT's ``validate_kitti``
                      prints (and papers quote as "KITTI-15 (train) EPE").

Units: EPE in pixels; ``*_pct`` in percent of valid pixels; precision / recall / F1 and AUSE as plain
numbers (AUSE in pixels·fraction).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

# KITTI 2015 outlier ("Fl"): end-point error > 3 px and > 5 % of the ground-truth magnitude.
OUTLIER_ABS_PX = 3.0
OUTLIER_REL = 0.05
ACCURACY_THRESHOLDS_PX = (1.0, 3.0, 5.0)
# Fractions of pixels removed; 1.0 is left out because nothing would remain to average.
SPARSIFICATION_FRACTIONS = tuple(round(0.02 * i, 2) for i in range(50))


def endpoint_error(flow: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Per-pixel end-point error ‖flow − gt‖₂ (H×W float32, pixels) of two H×W×2 flows."""
    flow, gt = np.asarray(flow), np.asarray(gt)
    if flow.shape != gt.shape or flow.ndim != 3 or flow.shape[2] != 2:
        raise ValueError(f"expected flow and gt of the same shape H×W×2, got {flow.shape} and {gt.shape}")
    diff = flow.astype(np.float32, copy=False) - gt.astype(np.float32, copy=False)
    return np.sqrt(np.einsum("hwc,hwc->hw", diff, diff))


def is_outlier(epe: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """KITTI Fl outliers (H×W bool): EPE > 3 px and EPE > 5 % of ‖gt‖ (written without dividing by ‖gt‖)."""
    gt = np.asarray(gt, dtype=np.float32)
    magnitude = np.sqrt(np.einsum("hwc,hwc->hw", gt, gt))
    return (epe > OUTLIER_ABS_PX) & (epe > OUTLIER_REL * magnitude)


def sparsification_curves(
    epe: np.ndarray,
    confidence: np.ndarray,
    fractions: Sequence[float] = SPARSIFICATION_FRACTIONS,
) -> tuple[np.ndarray, np.ndarray]:
    """(curve, oracle): mean EPE of the pixels left after removing each fraction of them.

    ``curve`` removes the least confident pixels first; ``oracle`` removes the largest errors first,
    the best any confidence could do (Ilg et al., "Uncertainty estimates and multi-hypotheses networks
    for optical flow", ECCV 2018). ``epe`` and ``confidence`` are 1-D over the evaluated pixels.
    Ties in confidence are broken by pixel order (stable sort).
    """
    epe = np.asarray(epe, dtype=np.float64).ravel()
    confidence = np.asarray(confidence).ravel()
    if epe.shape != confidence.shape:
        raise ValueError(f"expected epe and confidence of the same size, got {epe.size} and {confidence.size}")
    fractions = np.asarray(fractions, dtype=np.float64)
    if fractions.ndim != 1 or np.any(fractions < 0) or np.any(fractions >= 1):
        raise ValueError(f"fractions: expected a 1-D grid in [0, 1), got {fractions.tolist()}")
    n = epe.size
    if n == 0:
        nan = np.full(fractions.shape, np.nan)
        return nan, nan.copy()
    removed = np.floor(fractions * n).astype(np.int64)
    kept = n - removed

    by_confidence = epe[np.argsort(confidence, kind="stable")]  # least confident first
    # Sum of what is left after dropping the first k: suffix sums, built as one reversed cumsum.
    suffix = np.concatenate([np.cumsum(by_confidence[::-1])[::-1], [0.0]])
    curve = suffix[removed] / kept

    prefix = np.concatenate([[0.0], np.cumsum(np.sort(epe))])  # smallest errors first
    oracle = prefix[kept] / kept
    return curve, oracle


def ause(
    curve: Sequence[float], oracle: Sequence[float], fractions: Sequence[float] = SPARSIFICATION_FRACTIONS
) -> float:
    """Area under the sparsification error: ∫ (curve − oracle) d(fraction), trapezoidal on the grid."""
    diff = np.asarray(curve, dtype=np.float64) - np.asarray(oracle, dtype=np.float64)
    x = np.asarray(fractions, dtype=np.float64)
    return float(np.sum((diff[1:] + diff[:-1]) * np.diff(x)) / 2)


@dataclass(frozen=True)
class PairStats:
    """Sums and counts of one frame pair; everything the split-level aggregates need.

    Occlusion-split fields are None without a ground-truth occlusion mask; occlusion-prediction
    counts are None without both masks; sparsification curves are None without a confidence map.
    All counts are over valid ground-truth pixels.
    """

    n_valid: int
    epe_sum: float
    n_outliers: int
    n_within: tuple[int, ...]  # pixels with EPE < each of ACCURACY_THRESHOLDS_PX
    n_occ: int | None = None
    epe_sum_occ: float | None = None
    n_outliers_occ: int | None = None
    n_noc: int | None = None
    epe_sum_noc: float | None = None
    n_outliers_noc: int | None = None
    occ_tp: int | None = None
    occ_fp: int | None = None
    occ_fn: int | None = None
    fractions: tuple[float, ...] | None = None  # removed fractions of the two curves below
    sparsification: tuple[float, ...] | None = None
    oracle: tuple[float, ...] | None = None

    @property
    def epe(self) -> float:
        return _ratio(self.epe_sum, self.n_valid)

    @property
    def fl_all_pct(self) -> float:
        return 100 * _ratio(self.n_outliers, self.n_valid)

    @property
    def ause(self) -> float | None:
        if self.sparsification is None:
            return None
        return ause(self.sparsification, self.oracle, self.fractions)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PairStats:
        data = dict(data)
        for key in ("n_within", "fractions", "sparsification", "oracle"):
            if data.get(key) is not None:
                data[key] = tuple(data[key])
        return cls(**data)


def _ratio(numerator: float | None, denominator: float | None) -> float:
    if numerator is None or not denominator:
        return math.nan
    return float(numerator) / float(denominator)


def _check_mask(name: str, mask: np.ndarray | None, shape: tuple[int, int]) -> np.ndarray | None:
    if mask is None:
        return None
    mask = np.asarray(mask)
    if mask.shape != shape:
        raise ValueError(f"{name}: expected shape {shape}, got {mask.shape}")
    return mask.astype(bool, copy=False)


def pair_stats(
    flow: np.ndarray,
    gt: np.ndarray,
    valid: np.ndarray | None = None,
    *,
    occluded: np.ndarray | None = None,
    predicted_occlusion: np.ndarray | None = None,
    confidence: np.ndarray | None = None,
    fractions: Sequence[float] = SPARSIFICATION_FRACTIONS,
) -> PairStats:
    """Reduce one pair to :class:`PairStats`.

    Args:
      flow, gt: H×W×2 predicted and ground-truth flow, pixels.
      valid: H×W bool, pixels with ground truth (default: all).
      occluded: H×W bool ground-truth occlusion (True = occluded), splits EPE into occ / noc.
      predicted_occlusion: H×W bool predicted occlusion, scored against ``occluded``.
      confidence: H×W float, higher = more trusted; gives the sparsification curve and its oracle.
    """
    epe = endpoint_error(flow, gt)
    shape = epe.shape
    valid = np.ones(shape, bool) if valid is None else _check_mask("valid", valid, shape)
    occluded = _check_mask("occluded", occluded, shape)
    predicted_occlusion = _check_mask("predicted_occlusion", predicted_occlusion, shape)
    if predicted_occlusion is not None and occluded is None:
        raise ValueError("predicted_occlusion: expected the ground-truth `occluded` mask to score it against, got None")

    outlier = is_outlier(epe, np.asarray(gt, dtype=np.float32))
    epe_valid = epe[valid]
    stats: dict[str, Any] = dict(
        n_valid=int(epe_valid.size),
        epe_sum=float(np.sum(epe_valid, dtype=np.float64)),
        n_outliers=int(np.count_nonzero(outlier & valid)),
        n_within=tuple(int(np.count_nonzero(epe_valid < t)) for t in ACCURACY_THRESHOLDS_PX),
    )
    if occluded is not None:
        for suffix, region in (("occ", valid & occluded), ("noc", valid & ~occluded)):
            stats[f"n_{suffix}"] = int(np.count_nonzero(region))
            stats[f"epe_sum_{suffix}"] = float(np.sum(epe[region], dtype=np.float64))
            stats[f"n_outliers_{suffix}"] = int(np.count_nonzero(outlier & region))
        if predicted_occlusion is not None:
            truth, guess = occluded[valid], predicted_occlusion[valid]
            stats["occ_tp"] = int(np.count_nonzero(truth & guess))
            stats["occ_fp"] = int(np.count_nonzero(~truth & guess))
            stats["occ_fn"] = int(np.count_nonzero(truth & ~guess))
    if confidence is not None:
        confidence = np.asarray(confidence)
        if confidence.shape != shape:
            raise ValueError(f"confidence: expected shape {shape}, got {confidence.shape}")
        curve, oracle = sparsification_curves(epe_valid, confidence[valid], fractions)
        stats["fractions"] = tuple(float(x) for x in fractions)
        stats["sparsification"] = tuple(float(x) for x in curve)
        stats["oracle"] = tuple(float(x) for x in oracle)
    return PairStats(**stats)


def precision_recall_f1(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    """Precision, recall and F1 of a binary prediction from its counts (NaN where undefined)."""
    precision = _ratio(tp, tp + fp)
    recall = _ratio(tp, tp + fn)
    f1 = _ratio(2 * tp, 2 * tp + fp + fn)
    return precision, recall, f1


@dataclass
class ScoreAccumulator:
    """Collects :class:`PairStats` by pair id and reports split-level aggregates and per-pair values.

    Workers return ``PairStats``; the driver calls :meth:`add` (or :meth:`merge` partial accumulators)
    and :meth:`summary` once at the end.
    """

    pairs: dict[str, PairStats] = field(default_factory=dict)

    def add(self, pair_id: str, stats: PairStats) -> None:
        if pair_id in self.pairs:
            raise ValueError(f"pair {pair_id!r} was already added; expected each pair once")
        self.pairs[pair_id] = stats

    def merge(self, other: ScoreAccumulator) -> None:
        for pair_id, stats in other.pairs.items():
            self.add(pair_id, stats)

    def extend(self, items: Iterable[tuple[str, PairStats]]) -> None:
        for pair_id, stats in items:
            self.add(pair_id, stats)

    def per_pair(self) -> dict[str, dict[str, float | None]]:
        """Pair id → that pair's EPE, Fl-all and, where available, EPE occ / noc and AUSE."""
        out = {}
        for pair_id, s in sorted(self.pairs.items()):
            row: dict[str, float | None] = {"pixels": s.n_valid, "epe": s.epe, "fl_all_pct": s.fl_all_pct}
            if s.n_occ is not None:
                row["epe_occ"] = _ratio(s.epe_sum_occ, s.n_occ)
                row["epe_noc"] = _ratio(s.epe_sum_noc, s.n_noc)
            if s.sparsification is not None:
                row["ause"] = s.ause
            out[pair_id] = row
        return out

    def summary(self) -> dict[str, Any]:
        """Split-level aggregates (see the module docstring for the averaging of each)."""
        stats = list(self.pairs.values())
        n_valid = sum(s.n_valid for s in stats)
        pair_epes = [s.epe for s in stats if s.n_valid > 0]
        out: dict[str, Any] = {
            "pairs": len(stats),
            "pixels": n_valid,
            "epe": _ratio(sum(s.epe_sum for s in stats), n_valid),
            "epe_image_mean": float(np.mean(pair_epes)) if pair_epes else math.nan,
            "fl_all_pct": 100 * _ratio(sum(s.n_outliers for s in stats), n_valid),
        }
        for i, threshold in enumerate(ACCURACY_THRESHOLDS_PX):
            out[f"acc{threshold:g}px_pct"] = 100 * _ratio(sum(s.n_within[i] for s in stats), n_valid)

        with_occ = [s for s in stats if s.n_occ is not None]
        if with_occ:
            for region in ("occ", "noc"):
                n = sum(getattr(s, f"n_{region}") for s in with_occ)
                out[f"epe_{region}"] = _ratio(sum(getattr(s, f"epe_sum_{region}") for s in with_occ), n)
                out[f"fl_{region}_pct"] = 100 * _ratio(sum(getattr(s, f"n_outliers_{region}") for s in with_occ), n)
            out["pairs_with_occlusion_gt"] = len(with_occ)

        with_pred = [s for s in stats if s.occ_tp is not None]
        if with_pred:
            # Micro average: counts summed over the split, like the pixel-weighted EPE.
            tp, fp, fn = (sum(getattr(s, k) for s in with_pred) for k in ("occ_tp", "occ_fp", "occ_fn"))
            out["occ_precision"], out["occ_recall"], out["occ_f1"] = precision_recall_f1(tp, fp, fn)

        with_conf = [s for s in stats if s.sparsification is not None and s.n_valid > 0]
        if with_conf:
            grids = {s.fractions for s in with_conf}
            if len(grids) != 1:
                raise ValueError(f"expected one sparsification grid for the split, got {len(grids)} different ones")
            (fractions,) = grids
            # Ilg et al. (2018) average the per-image curves; AUSE of the mean = mean of per-image AUSE.
            curve = np.mean([s.sparsification for s in with_conf], axis=0)
            oracle = np.mean([s.oracle for s in with_conf], axis=0)
            out["sparsification"] = {
                "fractions": list(fractions),
                "curve": curve.tolist(),
                "oracle": oracle.tolist(),
            }
            out["ause"] = ause(curve, oracle, fractions)
        return out
