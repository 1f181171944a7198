"""The simulator's training objective, per example (reduce with ``jnp.mean`` yourself).

The paper's objective is ``E = E_logit + E_cycle + E_phi``:

* ``logit_shift_loss`` (eq. 1): the frozen classifier's logit must move by at least
  ``delta`` towards the target group; beyond ``delta`` the hinge is flat.
* ``bce_shift_loss``: the "fool the classifier" alternative the paper contrasts (its Fig. 4b).
* ``cycle_loss`` (eq. 2): simulating back must recover the input.
* ``smoothness_loss`` (eq. 5): diffusion regulariser on every displacement field.

Task codes: ``0`` = inject disease (control -> patient), ``1`` = remove it. Logits are
positive for "diseased".
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
import optax

from jaxinterp._checks import check_same_shape

INJECT = 0
REMOVE = 1


def task_direction(task: jax.Array) -> jax.Array:
    """+1 for inject (logit must rise), -1 for remove (logit must fall)."""
    return 1.0 - 2.0 * jnp.asarray(task, jnp.float32)


def logit_shift_loss(
    original_logits: jax.Array,
    simulated_logits: jax.Array,
    task: jax.Array,
    *,
    delta: float,
) -> jax.Array:
    """Hinge on the logit shift, eq. 1 of the paper, per example.

    Inject (task 0): ``max(p(x) - p(x_sim), -delta)``; remove (task 1):
    ``max(p(x_sim) - p(x), -delta)``. The loss falls linearly while the logit moves towards
    the target group and is flat (``-delta``, zero gradient) once it has moved by ``delta``.
    ``original_logits`` are constants: no gradient flows into them.

    Args:
      original_logits: ``(N,)`` logits of the inputs.
      simulated_logits: ``(N,)`` logits of the simulated images.
      task: ``(N,)`` task codes (0 inject, 1 remove), or a scalar code for all.
      delta: the required shift (paper: 5 in 2D, 12.5 in 3D).

    Returns:
      ``(N,)``, each in ``[-delta, inf)``.
    """
    check_same_shape(original_logits.shape, simulated_logits.shape, "logit_shift_loss")
    shift = (simulated_logits - jax.lax.stop_gradient(original_logits)) * task_direction(task)
    return jnp.maximum(-shift, -delta)


def bce_shift_loss(simulated_logits: jax.Array, task: jax.Array) -> jax.Array:
    """Binary cross-entropy of the simulated logits against the target group, per example.

    Inject (task 0) targets "diseased" (label 1), remove (task 1) targets "control" (label 0).
    """
    labels = jnp.broadcast_to(
        1.0 - jnp.asarray(task, simulated_logits.dtype), simulated_logits.shape
    )
    return optax.sigmoid_binary_cross_entropy(simulated_logits, labels)


def _spatial_axes(x: jax.Array) -> tuple[int, ...]:
    return tuple(range(1, x.ndim))


def cycle_loss(
    cycled: jax.Array, original: jax.Array, *, norm: Literal["l1", "l2"] = "l2"
) -> jax.Array:
    """Cycle-consistency error, eq. 2: mean over voxels of ``|c - x|`` or ``(c - x)**2``.

    Args:
      cycled: ``(N, *spatial, C)``, the input simulated there and back.
      original: ``(N, *spatial, C)``.
      norm: ``"l2"`` (mean squared error, as the original code) or ``"l1"``.

    Returns:
      ``(N,)``.
    """
    check_same_shape(cycled.shape, original.shape, "cycle_loss")
    return mean_voxel_error(cycled, original, norm=norm, setting="cycle_loss: norm")


def mean_voxel_error(a: jax.Array, b: jax.Array, *, norm: str, setting: str) -> jax.Array:
    """Per example, the mean over voxels and channels of ``|a - b|`` (``norm="l1"``) or
    ``(a - b)**2`` (``"l2"``): the cycle error and the objective's change term.

    ``setting`` names where the norm came from, for the error any other norm raises.
    Returns ``(N,)``.
    """
    diff = a - b
    if norm == "l2":
        return jnp.mean(jnp.square(diff), axis=_spatial_axes(diff))
    if norm == "l1":
        return jnp.mean(jnp.abs(diff), axis=_spatial_axes(diff))
    raise ValueError(f"{setting} must be 'l1' or 'l2', got {norm!r}")


def smoothness_loss(
    field: jax.Array,
    *,
    norm: Literal["l1", "l2"] = "l2",
    reduction: Literal["mean", "sum"] = "mean",
    weight: jax.Array | None = None,
) -> jax.Array:
    """Diffusion regulariser of eq. 5 on forward differences, per field.

    ``norm="l2"``: ``||grad u||^2 = sum_{k, j} (u_k[x + e_j] - u_k[x])**2`` per voxel, as in
    the paper. ``norm="l1"``: ``sum_{k, j} |u_k[x + e_j] - u_k[x]|``, as the original code.
    ``reduction="sum"`` sums over voxels (eq. 5 as written); ``"mean"`` (default) averages
    each axis's differences over the voxels that have them, so the weight does not depend on
    the grid size. Multiply by ``lambda_phi`` yourself.

    ``weight`` (``(N, *spatial)``, non-negative) makes each axis's term a weighted mean: the
    difference between two neighbours counts with the smaller of their weights, divided by
    the sum of those weights (``reduction="mean"`` only), e.g. to smooth a field only where
    an image has something to change.

    Args:
      field: ``(N, *spatial, C)`` with 2 or 3 spatial axes: a displacement (``C = ndim``
        components, voxel units) or any field of ``C`` channels (an image change, say).

    Returns:
      ``(N,)``.
    """
    if field.ndim not in (4, 5):
        raise ValueError(
            "smoothness_loss: expected (N, *spatial, C) with 2 or 3 spatial axes, "
            f"got {field.shape}"
        )
    if norm not in ("l1", "l2"):
        raise ValueError(f"smoothness_loss: norm must be 'l1' or 'l2', got {norm!r}")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"smoothness_loss: reduction must be 'mean' or 'sum', got {reduction!r}")
    if weight is not None and (reduction != "mean" or weight.shape != field.shape[:-1]):
        raise ValueError(
            f"smoothness_loss: weight must have the field's shape {field.shape[:-1]} without "
            f"channels (got {weight.shape}) and reduction 'mean'"
        )
    penalty = jnp.square if norm == "l2" else jnp.abs
    spatial_axes = tuple(range(1, field.ndim - 1))
    reduce = jnp.sum if reduction == "sum" else jnp.mean
    total = jnp.zeros(field.shape[:1], field.dtype)
    for axis in spatial_axes:
        per_voxel = jnp.sum(penalty(jnp.diff(field, axis=axis)), axis=-1)  # over channels
        if weight is None:
            total = total + reduce(per_voxel, axis=spatial_axes)
            continue
        n = weight.shape[axis]
        pair = jnp.minimum(
            jax.lax.slice_in_dim(weight, 0, n - 1, axis=axis),
            jax.lax.slice_in_dim(weight, 1, n, axis=axis),
        )
        total = total + jnp.sum(pair * per_voxel, axis=spatial_axes) / jnp.maximum(
            jnp.sum(pair, axis=spatial_axes), 1e-12
        )
    return total
