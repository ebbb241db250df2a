"""Covering an image with overlapping fixed-size tiles and blending per-tile predictions back.

For networks that only run at one input size (Perceiver IO's optical flow: 368×496). The grid
and the blending weights follow DeepMind's optical-flow colab (deepmind-research
``perceiver/colabs/optical_flow.ipynb``, ``compute_grid_indices`` / ``compute_optical_flow``):
tiles step by ``tile − min_overlap``, the last one flush with the image border, and each
prediction is weighted by a tent that is 1 at the tile's border pixels and rises by 1 per pixel
towards its centre (min of the distances to the four borders), then normalised by the summed
weights, so that seams blend smoothly and the weights form a partition of unity.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch


def tile_starts(length: int, tile: int, min_overlap: int) -> list[int]:
    """Start offsets of tiles of size ``tile`` covering ``[0, length)`` with ≥ ``min_overlap`` overlap.

    The colab's grid, except that no tile starts past ``length − tile``: its
    ``range(0, length, step)`` with the last start replaced can leave a second-to-last tile
    hanging over the border (heights 697–716 with 368-pixel tiles), which that code cannot run.
    Where the colab's grid is valid the two are the same.
    """
    if tile < 1 or length < tile:
        raise ValueError(f"expected a length ≥ tile ≥ 1, got length {length} and tile {tile}")
    if not 0 <= min_overlap < tile:
        raise ValueError(f"min_overlap: expected 0 ≤ min_overlap < {tile}, got {min_overlap}")
    return list(range(0, length - tile, tile - min_overlap)) + [length - tile]


def tent_weights(height: int, width: int, *, device: torch.device | str | None = None) -> torch.Tensor:
    """height×width blending weights: min over both axes of min(i + 1, size − i), ≥ 1 everywhere."""
    wy = torch.arange(height, device=device, dtype=torch.float32)
    wx = torch.arange(width, device=device, dtype=torch.float32)
    wy = torch.minimum(wy + 1, height - wy)
    wx = torch.minimum(wx + 1, width - wx)
    return torch.minimum(wy[:, None], wx[None, :])


@dataclass(frozen=True)
class TileGrid:
    """The tiles of a ``height×width`` image for ``tile = (tile_height, tile_width)``."""

    height: int
    width: int
    tile: tuple[int, int]
    min_overlap: int = 20

    def __post_init__(self) -> None:
        th, tw = self.tile
        if self.height < th or self.width < tw:
            raise ValueError(
                f"expected an image at least as large as the tile {th}×{tw}, "
                f"got {self.height}×{self.width} (pad it first)"
            )

    @property
    def origins(self) -> list[tuple[int, int]]:
        """(y, x) of each tile's top-left pixel, row by row."""
        th, tw = self.tile
        return list(
            itertools.product(
                tile_starts(self.height, th, self.min_overlap), tile_starts(self.width, tw, self.min_overlap)
            )
        )

    def crop(self, images: torch.Tensor) -> torch.Tensor:
        """…×H×W → (tiles·…)×… : every tile of ``images``, tiles outermost; shape N_tiles×…×th×tw."""
        th, tw = self.tile
        return torch.stack([images[..., y : y + th, x : x + tw] for y, x in self.origins])

    def blend(self, tiles: torch.Tensor) -> torch.Tensor:
        """N_tiles×C×th×tw predictions (in :attr:`origins` order) → C×H×W, tent-weighted mean."""
        th, tw = self.tile
        origins = self.origins
        if tiles.shape[0] != len(origins) or tuple(tiles.shape[-2:]) != (th, tw):
            raise ValueError(f"expected {len(origins)}×C×{th}×{tw} tiles, got {tuple(tiles.shape)}")
        weights = tent_weights(th, tw, device=tiles.device)
        total = tiles.new_zeros((tiles.shape[1], self.height, self.width))
        coverage = tiles.new_zeros((self.height, self.width))
        for (y, x), tile in zip(origins, tiles):
            total[:, y : y + th, x : x + tw] += tile * weights
            coverage[y : y + th, x : x + tw] += weights
        return total / coverage
