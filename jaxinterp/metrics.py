"""Scores of an explanation map against a known truth."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxinterp._checks import check_same_shape


def ncc(
    a: jax.Array, b: jax.Array, *, mask: jax.Array | None = None, batch_dims: int = 0
) -> jax.Array:
    """Normalized cross-correlation (Pearson correlation over voxels) of two maps.

    The score VA-GAN and ICAM report: ``sum((a - mean a)(b - mean b)) / (n std_a std_b)``,
    in ``[-1, 1]``, invariant to the scale and offset of either map (so it compares a
    log-volume map with an intensity map fairly). NaN where either map is constant.

    Args:
      a, b: maps of the same shape ``(*batch, *voxels)``.
      mask: optional boolean array broadcastable to ``a``; only voxels where it is True count.
      batch_dims: number of leading axes that index examples; the rest are reduced.

    Returns:
      Shape ``a.shape[:batch_dims]``.
    """
    check_same_shape(a.shape, b.shape, "ncc")
    if not 0 <= batch_dims < a.ndim:
        raise ValueError(f"ncc: batch_dims must be in [0, {a.ndim}), got {batch_dims}")
    axes = tuple(range(batch_dims, a.ndim))
    dtype = jnp.promote_types(jnp.result_type(a, b), jnp.float32)
    a = a.astype(dtype)
    b = b.astype(dtype)
    if mask is None:
        weight = jnp.ones_like(a)
    else:
        weight = jnp.broadcast_to(jnp.asarray(mask), a.shape).astype(dtype)
    count = jnp.sum(weight, axis=axes, keepdims=True)
    mean_a = jnp.sum(weight * a, axis=axes, keepdims=True) / count
    mean_b = jnp.sum(weight * b, axis=axes, keepdims=True) / count
    da = (a - mean_a) * weight
    db = (b - mean_b) * weight
    cov = jnp.sum(da * db, axis=axes)
    var_a = jnp.sum(da * da, axis=axes)
    var_b = jnp.sum(db * db, axis=axes)
    denom = jnp.sqrt(var_a * var_b)
    return jnp.where(denom > 0, cov / jnp.where(denom > 0, denom, 1.0), jnp.nan)
