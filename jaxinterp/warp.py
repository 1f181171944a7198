"""Pull-back warping of images by dense displacement fields, and velocity integration.

Conventions (shared by the whole package):

* Arrays are channels-last: an image is ``(*spatial, C)``, a batch ``(N, *spatial, C)``.
* A displacement field has shape ``(*spatial, ndim)`` (or ``(N, *spatial, ndim)``) in
  VOXEL units; component ``k`` moves array axis ``k`` (``meshgrid(..., indexing="ij")``).
* Warps pull back: ``warped(x) = image(x + u(x))``, with (bi/tri)linear interpolation.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
from jax.scipy.ndimage import map_coordinates

from jaxinterp._checks import split_field_shape

WarpMode = Literal["zeros", "edge"]

# jax's map_coordinates "constant" mode interpolates towards cval across the border (SciPy's
# "grid-constant", PyTorch's grid_sample(padding_mode="zeros", align_corners=True));
# "nearest" clamps coordinates to the volume, i.e. replicates the edge voxels.
_MAP_MODES = {"zeros": "constant", "edge": "nearest"}


def identity_grid(spatial_shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
    """Voxel coordinates of a grid, shape ``(*spatial_shape, ndim)``, ``indexing="ij"``."""
    axes = [jnp.arange(n, dtype=dtype) for n in spatial_shape]
    return jnp.stack(jnp.meshgrid(*axes, indexing="ij"), axis=-1)


def _warp_one(image: jax.Array, displacement: jax.Array, mode: str) -> jax.Array:
    """Warp one channels-last image ``(*spatial, C)`` by one field ``(*spatial, ndim)``."""
    spatial = displacement.shape[:-1]
    coords = identity_grid(spatial, displacement.dtype) + displacement
    coords = [coords[..., k] for k in range(len(spatial))]

    def sample(channel):
        return map_coordinates(channel, coords, order=1, mode=_MAP_MODES[mode], cval=0.0)

    warped = jax.vmap(sample, in_axes=-1, out_axes=-1)(image.astype(displacement.dtype))
    return warped.astype(image.dtype)


def warp(image: jax.Array, displacement: jax.Array, *, mode: WarpMode = "zeros") -> jax.Array:
    """Pull-back warp: ``warped[x] = image[x + displacement[x]]``, (bi/tri)linear.

    Args:
      image: ``(*batch, *spatial, C)``, channels-last; 2D or 3D spatial.
      displacement: ``(*batch, *spatial, ndim)`` in voxel units; component ``k`` moves
        array axis ``k``. The number of spatial axes is ``displacement.shape[-1]``.
      mode: what is read outside the volume. ``"zeros"``: 0, interpolated across the
        border (SciPy ``mode="grid-constant"``; PyTorch ``grid_sample`` with
        ``align_corners=True, padding_mode="zeros"``, the original code's behaviour).
        ``"edge"``: the nearest edge voxel (SciPy ``mode="nearest"``).

    Returns:
      The warped image, same shape and dtype as ``image``. Differentiable in both
      arguments (the gradient in ``displacement`` is that of the linear interpolant).
    """
    if mode not in _MAP_MODES:
        raise ValueError(f"warp: mode must be one of {sorted(_MAP_MODES)}, got {mode!r}")
    batch, spatial, ndim = split_field_shape(displacement.shape, "warp: displacement")
    expected = (*batch, *spatial)
    if image.ndim != displacement.ndim or image.shape[:-1] != expected:
        raise ValueError(
            f"warp: image shape {image.shape} does not match displacement shape "
            f"{displacement.shape}; expected an image of shape {(*expected, 'C')}"
        )
    fn = lambda im, u: _warp_one(im, u, mode)
    for _ in batch:
        fn = jax.vmap(fn)
    return fn(image, displacement)


def compose(first: jax.Array, second: jax.Array) -> jax.Array:
    """Displacement of ``x -> phi_first(phi_second(x))`` for pull-back fields.

    With ``phi(x) = x + u(x)``, warping by ``first`` then by ``second`` reads the image at
    ``phi_first(phi_second(x))``, whose displacement is ``second(x) + first(x + second(x))``.
    Fields are sampled with edge replication outside the volume. Shapes as in ``warp``.
    """
    return second + warp(first, second, mode="edge")


def integrate_velocity(velocity: jax.Array, *, steps: int = 7) -> jax.Array:
    """Displacement of the flow of a stationary velocity field, by scaling and squaring.

    ``u = v / 2**steps`` is composed with itself ``steps`` times (``u <- u + u o (id + u)``),
    giving ``exp(v)``: for a smooth ``v`` and enough steps the map is a diffeomorphism, so
    its Jacobian determinant is positive everywhere (no folding) however large ``v`` is.

    Args:
      velocity: ``(*batch, *spatial, ndim)`` in voxel units.
      steps: number of squarings (the field is scaled by ``2**-steps`` first).

    Returns:
      The displacement field, same shape as ``velocity``.
    """
    if steps < 0:
        raise ValueError(f"integrate_velocity: steps must be >= 0, got {steps}")
    split_field_shape(velocity.shape, "integrate_velocity: velocity")
    u = velocity / (2.0**steps)
    for _ in range(steps):
        u = compose(u, u)
    return u
