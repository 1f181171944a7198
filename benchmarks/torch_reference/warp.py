"""Pull-back warp of channels-first volumes by a voxel-unit displacement field (PyTorch).

``warped[n, c, i, j, k] = image[n, c, (i, j, k) + u[n, :, i, j, k]]``, trilinear, samples
outside the volume read 0: ``F.grid_sample(align_corners=True, mode="bilinear",
padding_mode="zeros")`` on the identity grid plus the field, as the original code does.
This equals ``scipy.ndimage.map_coordinates(order=1, mode="grid-constant")``.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

__all__ = ["warp"]


def warp(image: torch.Tensor, displacement: torch.Tensor) -> torch.Tensor:
    """Warp ``image`` ``(N, C, D, H, W)`` by ``displacement`` ``(N, 3, D, H, W)``.

    The field is in voxel units and channel k moves array axis k (D, H, W). grid_sample's
    grid is ``(N, D, H, W, 3)`` with its last axis in (x, y, z) = (W, H, D) order, each
    coordinate normalised so that -1 and +1 are the centres of the first and last voxels
    (``align_corners=True``); the conversion is ``2 * p / (size - 1) - 1`` per axis.
    """
    if image.ndim != 5 or displacement.ndim != 5:
        raise ValueError(
            f"expected 5D image and field, got {tuple(image.shape)}, {tuple(displacement.shape)}"
        )
    n, _, *spatial = image.shape
    if displacement.shape[0] != n or displacement.shape[1] != 3:
        raise ValueError(f"displacement must be ({n}, 3, *spatial), got {displacement.shape}")
    if list(displacement.shape[2:]) != spatial:
        raise ValueError(f"spatial shapes differ: {tuple(image.shape)} vs {displacement.shape}")
    if min(spatial) < 2:
        raise ValueError(f"every spatial size must be at least 2, got {spatial}")
    axes = [torch.arange(s, dtype=displacement.dtype, device=displacement.device) for s in spatial]
    identity = torch.stack(torch.meshgrid(*axes, indexing="ij"))  # (3, D, H, W)
    points = identity[None] + displacement  # (N, 3, D, H, W), voxel coordinates (d, h, w)
    scale = torch.tensor([2.0 / (s - 1) for s in spatial], dtype=points.dtype, device=points.device)
    normalised = points * scale[None, :, None, None, None] - 1.0
    grid = normalised.flip(1).permute(0, 2, 3, 4, 1)  # (N, D, H, W, 3) as (w, h, d)
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
