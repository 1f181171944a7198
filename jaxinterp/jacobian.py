"""Jacobians of displacement fields and the explanation map, the log of local volume change.

Conventions: fields are ``(*batch, *spatial, ndim)`` in voxel units, component ``k`` moves
axis ``k``; the map of a field is ``phi(x) = x + u(x)`` and warps pull back
(``warped(x) = image(phi(x))``). See ``jaxinterp.warp``.

Derivatives are taken with ``jax.jacfwd`` on the (bi/tri)linear interpolant of ``phi``. At a
voxel centre the interpolant has a kink; its right derivative along axis ``k`` is the forward
difference and its left derivative the backward one. ``scheme="central"`` (default) averages
the two, which is the central difference ``(u[i+1] - u[i-1]) / 2`` (``numpy.gradient``) inside
the volume; ``scheme="forward"`` is the Jacobian of the interpolant on the cell that starts at
each voxel. Outside the volume the field is replicated from its edge, so a one-sided
derivative across the border is 0 (the central scheme halves the inner difference there).
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
from jax.scipy.ndimage import map_coordinates

from jaxinterp._checks import split_field_shape
from jaxinterp.warp import identity_grid, invert_displacement, warp

Scheme = Literal["central", "forward"]


def _right_jacobian_one(u: jax.Array) -> jax.Array:
    """``d phi / dx`` of one field ``(*spatial, ndim)`` from the right, ``(*spatial, ndim, ndim)``.

    Entry ``[..., i, j]`` is ``d phi_i / d x_j``.
    """
    spatial, ndim = u.shape[:-1], u.shape[-1]
    components = jnp.moveaxis(u, -1, 0)

    def phi(x):  # x: (ndim,) voxel coordinates of one point
        coords = [x[k][None] for k in range(ndim)]
        sample = lambda c: map_coordinates(c, coords, order=1, mode="nearest")[0]
        return x + jax.vmap(sample)(components)

    points = identity_grid(spatial, u.dtype).reshape(-1, ndim)
    jac = jax.vmap(jax.jacfwd(phi))(points)
    return jac.reshape(*spatial, ndim, ndim)


def _jacobian_one(u: jax.Array, scheme: str) -> jax.Array:
    right = _right_jacobian_one(u)
    if scheme == "forward":
        return right
    # Left derivatives are right derivatives of the field mirrored along every spatial axis
    # (mirroring x -> -x flips the sign of each derivative).
    spatial_axes = tuple(range(u.ndim - 1))
    mirrored = _right_jacobian_one(jnp.flip(u, spatial_axes))
    eye = jnp.broadcast_to(jnp.eye(u.shape[-1], dtype=u.dtype), right.shape)
    left = 2 * eye - jnp.flip(mirrored, spatial_axes)
    return 0.5 * (right + left)


def displacement_jacobian(displacement: jax.Array, *, scheme: Scheme = "central") -> jax.Array:
    """Jacobian matrix ``I + du/dx`` of ``phi(x) = x + u(x)`` at every voxel.

    Args:
      displacement: ``(*batch, *spatial, ndim)``, voxel units, ``ndim`` in {2, 3}.
      scheme: ``"central"`` or ``"forward"`` differences (see the module docstring).

    Returns:
      ``(*batch, *spatial, ndim, ndim)``; entry ``[..., i, j] = d phi_i / d x_j``.
    """
    if scheme not in ("central", "forward"):
        raise ValueError(f"scheme must be 'central' or 'forward', got {scheme!r}")
    batch, _, _ = split_field_shape(displacement.shape, "displacement_jacobian: displacement")
    fn = lambda u: _jacobian_one(u, scheme)
    for _ in batch:
        fn = jax.vmap(fn)
    return fn(displacement)


def jacobian_determinant(displacement: jax.Array, *, scheme: Scheme = "central") -> jax.Array:
    """``det(I + du/dx)`` at every voxel: the local volume ratio of the map ``x -> x + u(x)``.

    Args:
      displacement: ``(*batch, *spatial, ndim)``, voxel units.
      scheme: finite-difference scheme, see ``displacement_jacobian``.

    Returns:
      ``(*batch, *spatial)``. Values ``<= 0`` mark folding (the map is not invertible there).
    """
    return jnp.linalg.det(displacement_jacobian(displacement, scheme=scheme))


def log_volume_change(
    displacement: jax.Array, *, eps: float = 1e-3, scheme: Scheme = "central"
) -> jax.Array:
    """The explanation map: log of the tissue's local volume ratio, simulated over original.

    Warps pull back (``simulated(x) = original(x + u(x))``), so the tissue that fills a small
    region around ``x`` in the simulated image came from a region ``det(I + du/dx)`` times as
    large in the original: its volume changed by ``1 / det``. The map is therefore
    ``-log det(I + du/dx)``: NEGATIVE where tissue shrank (atrophy), POSITIVE where it grew
    (e.g. enlarged ventricles), 0 where the warp preserves volume.

    Folding policy: where ``det <= eps`` (folding or near-folding, no valid volume ratio) the
    determinant is clamped to ``eps``, so the map is finite everywhere and at most
    ``-log(eps)`` (6.9 for the default); report ``folding_fraction`` beside the map, and
    prefer a velocity-field simulator (``integrate_velocity``) that cannot fold.

    Args:
      displacement: ``(*batch, *spatial, ndim)``, voxel units.
      eps: smallest determinant used in the log.
      scheme: finite-difference scheme, see ``displacement_jacobian``.

    Returns:
      ``(*batch, *spatial)``.
    """
    if not eps > 0:
        raise ValueError(f"log_volume_change: eps must be > 0, got {eps}")
    det = jacobian_determinant(displacement, scheme=scheme)
    return -jnp.log(jnp.maximum(det, eps))


def log_volume_change_on_input(
    displacement: jax.Array,
    *,
    iterations: int = 20,
    eps: float = 1e-3,
    scheme: Scheme = "central",
) -> jax.Array:
    """``log_volume_change`` located on the image that was warped instead of the warped one.

    ``log_volume_change(u)`` at ``x`` is the volume change of the tissue that ENDS UP at
    ``x`` in the warped image. This map holds at each voxel ``y`` of the input the volume
    change of the tissue that STARTS there: the same map read at ``phi^-1(y)``, where that
    tissue goes (``warp(log_volume_change(u), invert_displacement(u), mode="edge")``,
    trilinear). For a simulator that removes a disease, this puts the explanation on the
    patient's own scan, the anatomy the disease changed, instead of on the healed image.

    Args:
      displacement: ``(*batch, *spatial, ndim)``, voxel units, pull-back.
      iterations: fixed-point steps of `jaxinterp.warp.invert_displacement`.
      eps, scheme: as in ``log_volume_change``.

    Returns:
      ``(*batch, *spatial)``.
    """
    change = log_volume_change(displacement, eps=eps, scheme=scheme)
    inverse = invert_displacement(displacement, iterations=iterations)
    return warp(change[..., None], inverse, mode="edge")[..., 0]


def folding_fraction(displacement: jax.Array, *, scheme: Scheme = "central") -> jax.Array:
    """Fraction of voxels where ``det(I + du/dx) <= 0``, per field: shape ``batch``."""
    det = jacobian_determinant(displacement, scheme=scheme)
    ndim = displacement.shape[-1]
    return jnp.mean(det <= 0, axis=tuple(range(-ndim, 0)))


def divergence(displacement: jax.Array) -> jax.Array:
    """``sum_k du_k / dx_k``: the trace of ``displacement_jacobian(...) - I`` (central scheme).

    To first order in the field, ``det(I + du/dx) = 1 + div u``, so ``-divergence`` is the
    log volume change of small fields at a fraction of ``log_volume_change``'s cost (a few
    array shifts instead of a Jacobian per voxel); the simulator's objective penalises it.

    Args:
      displacement: ``(*batch, *spatial, ndim)``, voxel units.

    Returns:
      ``(*batch, *spatial)``.
    """
    batch, _, ndim = split_field_shape(displacement.shape, "divergence: displacement")
    total = jnp.zeros(displacement.shape[:-1], displacement.dtype)
    for k in range(ndim):
        axis = len(batch) + k
        component = displacement[..., k]
        widths = [(1, 1) if a == axis else (0, 0) for a in range(component.ndim)]
        padded = jnp.pad(component, widths, mode="edge")  # the field replicated at the border
        after = jax.lax.slice_in_dim(padded, 2, None, axis=axis)
        before = jax.lax.slice_in_dim(padded, 0, -2, axis=axis)
        total = total + 0.5 * (after - before)
    return total
