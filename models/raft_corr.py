"""RAFT's correlation lookup (Teed & Deng, ECCV 2020, Sec. 3.2): two implementations, one output.

Both take the two feature maps ``fmap0, fmap1`` (B×D×h×w, 1/8 of the padded image) and, called
with the current correspondences ``coords`` (B×2×h×w, x then y, pixels of the 1/8 grid), return
the correlation features B×(levels·(2r+1)²)×h×w, float32. Level ``l`` correlates each pixel of
fmap0 with fmap1 average-pooled ``l`` times by 2, sampled bilinearly (zero outside the map) on
the (2r+1)×(2r+1) integer window around ``coords / 2**l``, divided by √D.

``AllPairsCorrelation`` is the official one: it stores the whole pyramid of correlation volumes,
which grows with (h·w)². Per pair (float32, 4 levels), ``all_pairs_bytes`` gives:

    ========================  ===============  ===========  =============
    input (padded to ×8)      1/8 grid (h×w)   level 0      whole pyramid
    ========================  ===============  ===========  =============
    540p  (960×540 → ×544)    68×120           0.27 GB      0.35 GB
    1080p (1920×1080)         135×240          4.20 GB      5.56 GB
    4K    (3840×2160)         270×480          67.2 GB      89.2 GB
    ========================  ===============  ===========  =============

(GB = 1e9 bytes; level 0 is 4·(h·w)² bytes, the coarser levels add about a third; a bidirectional
call holds two pyramids.)

``OnDemandCorrelation`` gives the same output up to float rounding without storing any volume:
it keeps fmap1's average-pooled pyramid (pooling the volume over fmap1's axes equals correlating
with pooled features, both being linear) and computes, per lookup, the dot products on the
(2r+2)² integer window that the bilinear samples touch. Its working memory is bounded by
``chunk_elements`` floats, whatever the image size; the price is recomputing the dot products at
every iteration. This is what the official CUDA "alternate_corr" extension does, in plain PyTorch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

BYTES_PER_FLOAT32 = 4
# Working-set cap of one on-demand lookup chunk: 2**25 float32 = 128 MiB.
DEFAULT_CHUNK_ELEMENTS = 2**25


def _level_sizes(h: int, w: int, levels: int) -> list[tuple[int, int]]:
    """Spatial sizes of the pyramid levels; avg_pool2d(2, stride=2) floors odd sizes."""
    sizes = [(h, w)]
    for _ in range(levels - 1):
        h, w = h // 2, w // 2
        sizes.append((h, w))
    return sizes


def min_feature_size(levels: int) -> int:
    """Smallest 1/8-grid side the pyramid supports: the coarsest level needs at least 2 pixels
    per axis, because the official lookup normalizes coordinates by (size − 1)."""
    return 2**levels


def all_pairs_bytes(height: int, width: int, *, levels: int = 4, batch: int = 1) -> int:
    """Bytes of the all-pairs pyramid (float32) for ``batch`` image pairs of ``height``×``width``
    pixels, padded to a multiple of 8 as RAFT does."""
    h, w = math.ceil(height / 8), math.ceil(width / 8)
    cells = sum(hl * wl for hl, wl in _level_sizes(h, w, levels))
    return batch * h * w * cells * BYTES_PER_FLOAT32


def _check_fmaps(fmap0: torch.Tensor, fmap1: torch.Tensor, levels: int) -> None:
    if fmap0.shape != fmap1.shape or fmap0.ndim != 4:
        raise ValueError(
            f"expected two B×D×h×w feature maps of one shape, got {tuple(fmap0.shape)} and {tuple(fmap1.shape)}"
        )
    smallest = min_feature_size(levels)
    if min(fmap0.shape[-2:]) < smallest:
        raise ValueError(
            f"expected feature maps of at least {smallest}×{smallest} for {levels} levels, "
            f"got {tuple(fmap0.shape[-2:])}"
        )


def _window_offsets(radius: int, device: torch.device) -> torch.Tensor:
    """(2r+1)×(2r+1)×2 offsets added to (x, y). RAFT's window is x-major: entry [i, j] is
    (x + i − r, y + j − r), because the official code stacks ``meshgrid(dy, dx)`` into an (x, y)
    grid. The trained motion encoder expects that channel order, so it is kept."""
    steps = torch.arange(-radius, radius + 1, dtype=torch.float32, device=device)
    di, dj = torch.meshgrid(steps, steps, indexing="ij")
    return torch.stack([di, dj], dim=-1)


class AllPairsCorrelation:
    """The official all-pairs pyramid; memory grows with (h·w)², see the module docstring."""

    def __init__(self, fmap0: torch.Tensor, fmap1: torch.Tensor, *, levels: int, radius: int):
        _check_fmaps(fmap0, fmap1, levels)
        self.levels, self.radius = levels, radius
        b, d, h, w = fmap0.shape
        volume = torch.matmul(fmap0.reshape(b, d, h * w).transpose(1, 2), fmap1.reshape(b, d, h * w))
        # One 1×h×w "image" per query pixel, so that pooling and grid_sample act on fmap1's axes.
        # In place: a second (h·w)² buffer would double the peak memory (same value as the official division).
        volume = volume.reshape(b * h * w, 1, h, w).div_(torch.sqrt(torch.tensor(d).float()))
        self.pyramid = [volume]
        for _ in range(levels - 1):
            volume = F.avg_pool2d(volume, 2, stride=2)
            self.pyramid.append(volume)

    def __call__(self, coords: torch.Tensor) -> torch.Tensor:
        """B×2×h×w correspondences in 1/8-grid pixels → B×(levels·(2r+1)²)×h×w float32."""
        b, _, h, w = coords.shape
        centres = coords.permute(0, 2, 3, 1).reshape(b * h * w, 1, 1, 2)
        offsets = _window_offsets(self.radius, coords.device)[None]
        features = []
        for level, volume in enumerate(self.pyramid):
            points = centres / 2**level + offsets
            # grid_sample wants [-1, 1]; (size − 1) is the official normalization (align_corners=True).
            scale = torch.tensor([volume.shape[-1] - 1, volume.shape[-2] - 1], dtype=points.dtype, device=points.device)
            sampled = F.grid_sample(volume, 2 * points / scale - 1, align_corners=True)
            features.append(sampled.view(b, h, w, -1))
        return torch.cat(features, dim=-1).permute(0, 3, 1, 2).contiguous().float()


class OnDemandCorrelation:
    """Same output as :class:`AllPairsCorrelation` (up to float rounding) in memory linear in h·w.

    Per level, each query pixel's bilinear samples at ``c + offset`` (integer offsets) share one
    set of weights, from the fractional part of ``c``; so the (2r+1)² samples are bilinear
    combinations of (2r+2)² dot products at integer positions, zero outside the map as in
    ``grid_sample``'s zero padding. Query pixels are processed in chunks whose gathered target
    features fill at most ``chunk_elements`` floats, in one buffer reused across chunks (fresh
    large allocations cost page faults that dominate on CPU).
    """

    def __init__(
        self,
        fmap0: torch.Tensor,
        fmap1: torch.Tensor,
        *,
        levels: int,
        radius: int,
        chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
    ):
        _check_fmaps(fmap0, fmap1, levels)
        self.levels, self.radius, self.chunk_elements = levels, radius, chunk_elements
        self.dim = fmap0.shape[1]
        self.queries = fmap0.flatten(2).transpose(1, 2).reshape(-1, self.dim)  # (B·h·w)×D
        self.targets = []  # per level: ((B·hl·wl)×D features, (hl, wl))
        for level in range(levels):
            if level:
                fmap1 = F.avg_pool2d(fmap1, 2, stride=2)
            self.targets.append((fmap1.flatten(2).transpose(1, 2).reshape(-1, self.dim), tuple(fmap1.shape[-2:])))

    def __call__(self, coords: torch.Tensor) -> torch.Tensor:
        """B×2×h×w correspondences in 1/8-grid pixels → B×(levels·(2r+1)²)×h×w float32."""
        b, _, h, w = coords.shape
        points = coords.flatten(2).transpose(1, 2).reshape(-1, 2)  # (B·h·w)×2
        batch = torch.arange(b, device=coords.device).repeat_interleave(h * w)
        window = (2 * self.radius + 2) ** 2
        chunk = max(1, min(len(points), self.chunk_elements // (window * self.dim)))
        buffer = self.queries.new_empty(chunk * window, self.dim)
        features = []
        for level, (target, size) in enumerate(self.targets):
            centres = points / 2**level
            parts = []
            for i in range(0, len(points), chunk):
                rows = slice(i, i + chunk)
                parts.append(self._lookup(self.queries[rows], target, size, centres[rows], batch[rows], buffer))
            features.append(torch.cat(parts))
        out = torch.cat(features, dim=-1) / math.sqrt(self.dim)
        return out.view(b, h * w, -1).transpose(1, 2).reshape(b, -1, h, w)

    def _lookup(
        self,
        queries: torch.Tensor,
        target: torch.Tensor,
        size: tuple[int, int],
        centres: torch.Tensor,
        batch: torch.Tensor,
        buffer: torch.Tensor,
    ) -> torch.Tensor:
        """queries n×D, target (B·hl·wl)×D, centres n×2, batch n → n×(2r+1)² (x-major window)."""
        n, d = queries.shape
        hl, wl = size
        r, side = self.radius, 2 * self.radius + 2
        base = centres.floor()
        frac = centres - base
        steps = torch.arange(-r, r + 2, device=centres.device)
        # Integer window, x-major like the official channel order: [.., i, j] = (x0 + i − r, y0 + j − r).
        xs = base[:, 0, None].long() + steps  # n×side
        ys = base[:, 1, None].long() + steps
        inside = ((xs >= 0) & (xs < wl))[:, :, None] & ((ys >= 0) & (ys < hl))[:, None, :]
        index = (batch[:, None, None] * hl + ys.clamp(0, hl - 1)[:, None, :]) * wl + xs.clamp(0, wl - 1)[:, :, None]
        gathered = torch.index_select(target, 0, index.view(-1), out=buffer[: n * side * side])
        dots = torch.matmul(queries[:, None, :], gathered.view(n, side * side, d).transpose(1, 2))
        dots = dots.view(n, side, side) * inside
        fx, fy = frac[:, 0, None, None], frac[:, 1, None, None]
        along_x = dots[:, :-1, :] * (1 - fx) + dots[:, 1:, :] * fx
        along_y = along_x[:, :, :-1] * (1 - fy) + along_x[:, :, 1:] * fy
        return along_y.reshape(n, (side - 1) ** 2)


CORRELATIONS = {"all_pairs": AllPairsCorrelation, "on_demand": OnDemandCorrelation}
