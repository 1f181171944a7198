"""Non-rigid registration of volumes to a template, with the warp and smoothness of the simulator.

`register` finds, for each moving image, the pull-back displacement ``u`` on the fixed
(template) grid with ``warp(moving, u) ~ fixed``: ``moving(x + u(x))`` is compared with
``fixed(x)``. ``u`` is the flow of a stationary velocity field (`integrate_velocity`,
scaling and squaring, so the map does not fold) whose control points lie on a grid
``coarse`` times coarser than the image, upsampled trilinearly (smooth by construction).
The objective is the mean squared intensity difference (inside ``mask`` when given) plus
``smoothness`` times the diffusion regulariser of the velocity (`smoothness_loss`), both
per image; Adam minimises it for ``steps`` steps. The images of a batch are registered
independently (Adam is elementwise, so summing their objectives changes nothing), in one
jitted call.

Bringing a subject's map to the template is then ``warp(map, u)``
(`to_template`): the value at template voxel ``x`` is the subject's value at the
anatomically matching point ``x + u(x)``. Inputs should share an intensity scale (z-scored
inside the brain, as `jaxinterp.data.load_volume` gives them).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import optax

from jaxinterp.losses import smoothness_loss
from jaxinterp.warp import integrate_velocity, warp

__all__ = ["RegistrationConfig", "register", "to_template"]


@dataclasses.dataclass(frozen=True)
class RegistrationConfig:
    """How `register` optimises. Defaults chosen on z-scored brains at 32^3 (the synthetic
    cohort; benchmarks/RESULTS.md section 3) and on smooth test volumes."""

    steps: int = 100  # Adam steps
    learning_rate: float = 0.1  # Adam step size, in voxels of velocity per step
    smoothness: float = 0.05  # weight of the diffusion regulariser on the velocity
    coarse: int = 2  # velocity control points every `coarse` voxels
    integration_steps: int = 6  # scaling-and-squaring steps

    def __post_init__(self):
        if self.steps < 0 or self.coarse < 1 or self.integration_steps < 0:
            raise ValueError(f"invalid registration settings {self}")
        if not self.learning_rate > 0 or self.smoothness < 0:
            raise ValueError(f"invalid registration settings {self}")


def _displacement(velocity: jax.Array, spatial: tuple[int, ...], steps: int) -> jax.Array:
    """Coarse velocity ``(N, *coarse, ndim)`` -> displacement ``(N, *spatial, ndim)``."""
    full = jax.image.resize(
        velocity, (velocity.shape[0], *spatial, velocity.shape[-1]), method="linear"
    )
    return integrate_velocity(full, steps=steps)


def _mismatch(images: jax.Array, fixed: jax.Array, weights: jax.Array) -> jax.Array:
    """Weighted mean squared difference per image ``(N,)``."""
    squared = jnp.sum((images - fixed[None]) ** 2, axis=-1)  # (N, *spatial)
    return jnp.sum(squared * weights[None], axis=tuple(range(1, squared.ndim))) / jnp.sum(weights)


def _objective(velocity, moving, fixed, weights, config: RegistrationConfig):
    u = _displacement(velocity, fixed.shape[:-1], config.integration_steps)
    mismatch = _mismatch(warp(moving, u, mode="edge"), fixed, weights)
    per_image = mismatch + config.smoothness * smoothness_loss(velocity)
    return jnp.sum(per_image), mismatch


@functools.partial(jax.jit, static_argnames="config")
def _register(moving, fixed, weights, config: RegistrationConfig):
    spatial = fixed.shape[:-1]
    coarse = tuple(max(2, -(-s // config.coarse)) for s in spatial)
    velocity = jnp.zeros((moving.shape[0], *coarse, len(spatial)), moving.dtype)
    optimizer = optax.adam(config.learning_rate)
    grad_fn = jax.value_and_grad(_objective, has_aux=True)

    def step(carry, _):
        velocity, state = carry
        (_, mismatch), grads = grad_fn(velocity, moving, fixed, weights, config)
        updates, state = optimizer.update(grads, state, velocity)
        return (optax.apply_updates(velocity, updates), state), mismatch

    (velocity, _), history = jax.lax.scan(
        step, (velocity, optimizer.init(velocity)), None, length=config.steps
    )
    _, final = _objective(velocity, moving, fixed, weights, config)
    return _displacement(velocity, spatial, config.integration_steps), history, final


def register(
    moving: jax.Array,
    fixed: jax.Array,
    *,
    mask: jax.Array | None = None,
    config: RegistrationConfig = RegistrationConfig(),
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Registers each moving image to ``fixed``.

    Args:
      moving: ``(N, *spatial, C)`` channels-last, 2D or 3D spatial; or ``(*spatial, C)``.
      fixed: ``(*spatial, C)``, the template, on the grid of the moving images.
      mask: ``spatial`` weights of the intensity mismatch (e.g. the template's brain mask);
        None = every voxel.
      config: the optimisation (`RegistrationConfig`).

    Returns:
      ``(displacement, info)``: the pull-back displacement ``(N, *spatial, ndim)`` in
      voxels on the fixed grid (``warp(moving, displacement) ~ fixed``; without a batch
      axis when ``moving`` had none), and ``info`` with the mean squared mismatch per
      image before (``mismatch_before``) and after (``mismatch_after``) and per step
      (``history``, ``(steps, N)``).
    """
    moving, fixed = jnp.asarray(moving), jnp.asarray(fixed)
    single = moving.ndim == fixed.ndim
    if single:
        moving = moving[None]
    if moving.shape[1:] != fixed.shape or fixed.ndim not in (3, 4):
        raise ValueError(
            f"register: moving {moving.shape} and fixed {fixed.shape} must be "
            "(N, *spatial, C) and (*spatial, C) with the same spatial shape and channels"
        )
    moving, fixed = moving.astype(jnp.float32), fixed.astype(jnp.float32)
    weights = jnp.ones(fixed.shape[:-1]) if mask is None else jnp.asarray(mask, jnp.float32)
    if weights.shape != fixed.shape[:-1] or not float(weights.sum()) > 0:
        raise ValueError(f"register: mask must be {fixed.shape[:-1]} with a nonzero voxel")
    before = _mismatch(moving, fixed, weights)
    displacement, history, after = _register(moving, fixed, weights, config)
    info = {"mismatch_before": before, "mismatch_after": after, "history": history}
    return (displacement[0] if single else displacement), info


@jax.jit
def to_template(maps: jax.Array, displacement: jax.Array) -> jax.Array:
    """Subject maps ``(N, *spatial)`` sampled at ``x + u(x)`` of their registration fields
    ``(N, *spatial, ndim)``: the maps on the template grid (trilinear, edge values
    outside)."""
    return warp(maps[..., None], displacement, mode="edge")[..., 0]
