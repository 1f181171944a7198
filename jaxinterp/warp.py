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


def invert_displacement(displacement: jax.Array, *, iterations: int = 20) -> jax.Array:
    """The pull-back field of the inverse map, by fixed-point iteration.

    With ``phi(x) = x + u(x)``, returns ``w`` with ``phi^-1(y) = y + w(y)``: the solution of
    ``w(y) = -u(y + w(y))``, iterated from ``w = -u`` (``u`` sampled with edge replication
    outside the volume, as in ``compose``). Each step shrinks the error by about the
    largest ``|du/dx|``, so a smooth field that does not fold converges in a few steps
    (from ``-u``, the error after ``k`` steps is of order ``|du/dx|^(k+1) |u|``); where
    the map folds it has no inverse and the iteration does not settle: check
    ``compose(displacement, w)`` (0 for an exact inverse) where that matters. For the flow
    of a velocity field, ``integrate_velocity(-v)`` is the inverse too (up to the scaling
    and squaring's own error); this one inverts the field actually applied.

    Args:
      displacement: ``(*batch, *spatial, ndim)`` in voxel units.
      iterations: fixed-point steps.

    Returns:
      The inverse's displacement, same shape as ``displacement``.
    """
    if iterations < 0:
        raise ValueError(f"invert_displacement: iterations must be >= 0, got {iterations}")
    split_field_shape(displacement.shape, "invert_displacement: displacement")
    inverse = -displacement
    for _ in range(iterations):
        inverse = -warp(displacement, inverse, mode="edge")
    return inverse


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


def poisson_velocity(growth: jax.Array, *, ndim: int) -> jax.Array:
    """The curl-free velocity field whose divergence is ``-growth``: ``v = -grad psi``.

    ``psi`` solves ``laplacian psi = growth`` on the grid (voxel units, 7-point (3D) or
    5-point (2D) Laplacian, ``psi = 0`` one voxel beyond the grid), by an FFT of the odd
    extension of ``growth`` along each axis (a type-I discrete sine transform); the gradient
    is the central difference with the same zero border. Of all fields with this divergence
    it is the one of least squared norm, so the volume changes only where ``growth`` is
    non-zero and the tissue elsewhere moves without changing volume. Since
    ``log_volume_change(u) = -log det(I + du/dx) ~ -div u`` for a small pull-back field, the
    flow of ``v`` has a log volume change close to ``growth`` (positive = growth, e.g.
    enlarged ventricles).

    Args:
      growth: ``(*batch, *spatial)`` log-volume-change rate per voxel.
      ndim: number of spatial axes (the last ``ndim`` axes of ``growth``).

    Returns:
      ``(*batch, *spatial, ndim)`` velocity in voxel units, float32.
    """
    if ndim not in (2, 3) or growth.ndim < ndim:
        raise ValueError(
            f"poisson_velocity: growth must have {ndim} spatial axes (ndim 2 or 3), "
            f"got shape {growth.shape}"
        )
    growth = jnp.asarray(growth, jnp.float32)
    axes = tuple(range(growth.ndim - ndim, growth.ndim))
    ext = growth
    for axis in axes:  # odd extension [0, g, 0, -g reversed]: period 2 (n + 1)
        zero = jnp.zeros_like(jax.lax.slice_in_dim(ext, 0, 1, axis=axis))
        ext = jnp.concatenate([zero, ext, zero, -jnp.flip(ext, axis=axis)], axis=axis)
    eigen = 0.0
    for axis in axes:
        m = ext.shape[axis]
        lam = 2.0 * jnp.cos(2.0 * jnp.pi * jnp.arange(m) / m) - 2.0
        eigen = eigen + lam.reshape([m if a == axis else 1 for a in range(ext.ndim)])
    eigen = jnp.where(eigen == 0.0, 1.0, eigen)  # the mean of an odd signal is 0 anyway
    psi = jnp.fft.ifftn(jnp.fft.fftn(ext, axes=axes) / eigen, axes=axes).real
    for axis in axes:  # keep the original grid plus its zero border on each side
        psi = jax.lax.slice_in_dim(psi, 0, growth.shape[axis] + 2, axis=axis)
    velocity = []
    for axis in axes:
        n = growth.shape[axis]
        ahead = jax.lax.slice_in_dim(psi, 2, n + 2, axis=axis)
        behind = jax.lax.slice_in_dim(psi, 0, n, axis=axis)
        grad = (ahead - behind) / 2.0
        for other in axes:  # drop the border on the other axes
            if other != axis:
                grad = jax.lax.slice_in_dim(grad, 1, growth.shape[other] + 1, axis=other)
        velocity.append(-grad)
    return jnp.stack(velocity, axis=-1).astype(jnp.float32)
