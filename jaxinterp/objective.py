"""The simulator's whole objective for one batch, as one pure differentiable function.

``E = E_logit + E_cycle + E_phi`` (paper eq. 1, 2, 5) on a batch of controls ``x`` (task
inject) and patients ``y`` (task remove), plus an optional ``change_weight * mean|G(x) - x|``
(or its square) that asks the simulator to change as little as it can, an optional
``volume_weight * mean|div u|`` (and ``volume_squared_weight * mean (div u)^2``) that asks
it to change volume in as few places as it can, for a gain output an optional
``gain_weight * mean|log gain|`` that asks it to scale as few voxels as it can, and for a
volume output an optional ``growth_smoothness`` times the diffusion term of its drawn
growth (all 0 by default, as the paper):

    x_sim = G(x, inject)     y_sim = G(y, remove)      # first pass, one call on [x; y]
    x_cyc = G(x_sim, remove) y_cyc = G(y_sim, inject)  # second pass, one call

For image outputs (no field) ``lambda_phi`` weighs the same diffusion regulariser on the
intensity change ``G(x) - x`` of both passes. ``simulated_batch_norm`` says how BatchNorm
treats the second pass, whose inputs are simulated.

The classifier is frozen: it runs in inference mode and the objective is differentiated
only in the simulator's parameters (its variables are a separate argument). Each term is
the sum of its two directions' batch means, as the paper's ``E_X[..] + E_Y[..]``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxinterp.jacobian import divergence
from jaxinterp.losses import (
    INJECT,
    REMOVE,
    bce_shift_loss,
    cycle_loss,
    logit_shift_loss,
    mean_voxel_error,
    smoothness_loss,
)


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig:
    """Weights and forms of the three loss terms."""

    delta: float = 12.5  # required logit shift (paper: 5 in 2D, 12.5 in 3D)
    shift_loss: Literal["hinge", "bce"] = "hinge"  # eq. 1, or "fool the classifier" BCE
    cycle_weight: float = 1.0  # weight of E_cycle
    cycle_norm: Literal["l1", "l2"] = "l2"  # per-voxel norm of the cycle error
    lambda_phi: float = 0.02  # weight of the smoothness term E_phi (image outputs: below)
    smoothness_norm: Literal["l1", "l2"] = "l2"  # paper: L2 diffusion; original code: L1
    smoothness_reduction: Literal["mean", "sum"] = "mean"  # over voxels, see smoothness_loss
    change_weight: float = 0.0  # "change as little as possible": weight of mean |G(x) - x|
    # per-voxel norm of that change: "l1" concentrates it on the fewest voxels (one blob
    # of two that matter), "l2" spreads it in proportion to what each voxel does for the
    # logit (minimising sum d^2 at a fixed linear logit shift gives d ~ gradient)
    change_norm: Literal["l1", "l2"] = "l1"
    # "change volume in as few places as possible": weight of mean |div u| of the simulated
    # field (the first-order log volume change, `jaxinterp.jacobian.divergence`). The change
    # term above cannot see a warp of uniform tissue; this one does (field outputs only).
    volume_weight: float = 0.0
    # weight of mean (div u)^2, the same divergence squared. The absolute value above puts
    # the volume change in the fewest voxels, those that buy the most logit; the square
    # charges each voxel's growth by its size, so growth spreads in proportion to what it
    # buys (at a fixed linear logit shift, growth ~ the gradient). Both may be on (an
    # elastic net). On brain3d_32 (seed 2, weight 300) the square draws the ventricles at
    # the truth's size, front and back, where the absolute value overgrows their front, but
    # lets the classifier's broad response over the rest of the brain weigh as much: group
    # NCC 0.756 / 0.771 alone, 0.824 / 0.847 beside the absolute value, against 0.858 /
    # 0.853 without it (RESULTS.md section 3), so it stays off there.
    volume_squared_weight: float = 0.0
    # What lambda_phi's diffusion term smooths for an image output: the intensity change
    # G(x) - x ("change"), or, for a "gain" output, its log gain ("log_gain"): a smooth gain
    # scales a whole structure alike, where a smooth change lets the gain peak at its centre.
    # "log_gain_on_image": the same, weighted by the image's magnitude (a pair of neighbours
    # counts with the smaller of theirs), so the gain may change freely across the empty
    # background between structures, where it changes nothing (2D seed 2: 0.76 against
    # 0.77 for "log_gain", benchmarks/RESULTS.md section 4).
    image_smoothness: Literal["change", "log_gain", "log_gain_on_image"] = "change"
    # "scale as few voxels as possible" (gain outputs): weight of mean |log gain| of the first
    # pass. The diffusion term on the log gain costs nothing for a constant gain, which scales
    # the whole image alike (the image-as-map reference); this term does, and unlike the
    # change term it also counts a gain spread over the empty background. On 2D seed 2 it
    # shrank the diagonal-blob leak but made the gain uneven inside the blobs: 0.77 -> 0.72
    # at weight 1 (benchmarks/RESULTS.md section 4), so it stays off.
    gain_weight: float = 0.0
    # "Draw a smooth growth" (``output='volume'`` simulators): weight of the diffusion term
    # (`smoothness_loss`, norm ``growth_smoothness_norm``) on the drawn log volume change rate
    # of both passes, not only on the velocity that follows from it. Velocity smoothing
    # barely charges a zero-mean ripple of growth over the brain (the Poisson solve smooths
    # it away in the velocity), and a free growth map left to the other terms puts over half
    # its change into one. On brain3d_32 ("l1", weight 3: total variation) it smooths a free
    # map to the truth's smoothness (NCC 0.74 -> 0.76); with the network alone it left the
    # maps as spread, but with the tied population map it lifts the group NCC on three seeds
    # in both directions (weight 3: +0.01 to +0.03; weight 10: every seed past 0.8), so
    # brain3d_32 sets weight 10 (RESULTS.md section 3).
    growth_smoothness: float = 0.0
    growth_smoothness_norm: Literal["l1", "l2"] = "l2"
    # BatchNorm on the second (cycle) pass, whose inputs are simulated images: "batch" uses
    # and updates batch statistics like the first pass (paper); "running" uses the running
    # averages of the real images and leaves them alone, so inference (running averages
    # only) sees the statistics training saw on real inputs.
    simulated_batch_norm: Literal["batch", "running"] = "batch"


def _directions(values: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
    return jnp.mean(values[:n]), jnp.mean(values[n:])


def simulator_objective(
    params: Any,
    batch_stats: Any,
    classifier_variables: Any,
    controls: jax.Array,
    patients: jax.Array,
    rng: jax.Array,
    *,
    simulator: nn.Module,
    classifier: nn.Module,
    config: ObjectiveConfig,
    train: bool = True,
) -> tuple[jax.Array, tuple[dict[str, jax.Array], Any]]:
    """Loss of one batch and its parts.

    Args:
      params: the simulator's parameters (what is differentiated).
      batch_stats: the simulator's BatchNorm statistics (``{}`` if it has none).
      classifier_variables: the frozen classifier's variables (inference mode).
      controls: ``(B, *spatial, C)`` images of controls (disease is injected).
      patients: ``(B, *spatial, C)`` images of patients (disease is removed).
      rng: key for the simulator's dropout.
      simulator, classifier: the Flax modules (static).
      config: the loss terms.
      train: simulator in training mode (batch statistics, dropout) or inference mode.

    Returns:
      ``(loss, (metrics, new_batch_stats))``; metrics are scalars: each term, the mean logit
      shift per direction (towards the target group), mean |displacement|.
    """
    n = controls.shape[0]
    if patients.shape != controls.shape:
        raise ValueError(
            f"simulator_objective: controls {controls.shape} and patients {patients.shape} "
            "must have the same shape (one batch of each)"
        )
    images = jnp.concatenate([controls, patients])
    task = jnp.concatenate([jnp.full((n,), INJECT), jnp.full((n,), REMOVE)])
    rng_first, rng_second = jax.random.split(rng)

    def run(variables, inputs, tasks, key, train=train):
        if not train:
            return simulator.apply(variables, inputs, tasks, train=False), variables
        out, updates = simulator.apply(
            variables, inputs, tasks, train=True, mutable=["batch_stats"], rngs={"dropout": key}
        )
        return out, {**variables, **updates}

    variables = {"params": params, **({"batch_stats": batch_stats} if batch_stats else {})}
    first, variables = run(variables, images, task, rng_first)
    running = config.simulated_batch_norm == "running"
    second, variables = run(variables, first.image, 1 - task, rng_second, train and not running)

    classify: Callable[[jax.Array], jax.Array] = lambda im: classifier.apply(
        classifier_variables, im, train=False
    )
    classifier_variables = jax.lax.stop_gradient(classifier_variables)
    original_logits = jax.lax.stop_gradient(classify(images))
    simulated_logits = classify(first.image)

    if config.shift_loss == "hinge":
        shift = logit_shift_loss(original_logits, simulated_logits, task, delta=config.delta)
    elif config.shift_loss == "bce":
        shift = bce_shift_loss(simulated_logits, task)
    else:
        raise ValueError(f"unknown shift_loss {config.shift_loss!r}")
    cycle = cycle_loss(second.image, images, norm=config.cycle_norm)

    e_logit = sum(_directions(shift, n))
    e_cycle = config.cycle_weight * sum(_directions(cycle, n))
    change = mean_voxel_error(
        first.image, images, norm=config.change_norm, setting="ObjectiveConfig.change_norm"
    )
    e_change = config.change_weight * sum(_directions(change, n))
    e_phi = jnp.zeros((), jnp.float32)
    e_volume = jnp.zeros((), jnp.float32)
    e_gain = jnp.zeros((), jnp.float32)
    e_growth = jnp.zeros((), jnp.float32)
    magnitude = jnp.zeros((), jnp.float32)
    for name in ("volume_weight", "volume_squared_weight"):
        if getattr(config, name) and first.displacement is None:
            raise ValueError(
                f"ObjectiveConfig.{name} penalises the simulated field's volume change; "
                f"this simulator outputs images (no field): set {name}=0"
            )
    if config.growth_smoothness:
        if first.growth is None:
            raise ValueError(
                "ObjectiveConfig.growth_smoothness smooths a drawn growth; this simulator "
                "does not draw one (needs output='volume'): set growth_smoothness=0"
            )
        for growth in (first.growth, second.growth):
            smooth = smoothness_loss(growth[..., None], norm=config.growth_smoothness_norm)
            e_growth = e_growth + config.growth_smoothness * sum(_directions(smooth, n))
    if config.gain_weight:
        if first.log_gain is None:
            raise ValueError(
                "ObjectiveConfig.gain_weight penalises a gain output's log gain; this "
                "simulator has no gain output: set gain_weight=0"
            )
        gain = jnp.mean(jnp.abs(first.log_gain), axis=tuple(range(1, images.ndim)))
        e_gain = config.gain_weight * sum(_directions(gain, n))
    if first.displacement is not None:
        for field in (first.displacement, second.displacement):
            smooth = smoothness_loss(
                field, norm=config.smoothness_norm, reduction=config.smoothness_reduction
            )
            e_phi = e_phi + config.lambda_phi * sum(_directions(smooth, n))
        magnitude = jnp.mean(jnp.linalg.norm(first.displacement, axis=-1))
        if config.volume_weight or config.volume_squared_weight:
            spatial_axes = tuple(range(1, first.displacement.ndim - 1))
            div = divergence(first.displacement)
            for weight, per_voxel in (
                (config.volume_weight, jnp.abs),
                (config.volume_squared_weight, jnp.square),
            ):
                if weight:
                    volume = jnp.mean(per_voxel(div), axis=spatial_axes)
                    e_volume = e_volume + weight * sum(_directions(volume, n))
    elif config.lambda_phi:
        # Image outputs: the field G produces is the intensity change (or the log gain); the
        # same diffusion regulariser keeps it smooth (an adversarial pattern is not).
        weights = (None, None)
        if config.image_smoothness in ("log_gain", "log_gain_on_image"):
            if first.log_gain is None:
                raise ValueError(
                    f"ObjectiveConfig.image_smoothness={config.image_smoothness!r} needs a "
                    "simulator with output='gain'"
                )
            fields = (first.log_gain, second.log_gain)
            if config.image_smoothness == "log_gain_on_image":
                # each pass's gain scales that pass's input
                magnitude_of = lambda im: jax.lax.stop_gradient(jnp.abs(im).sum(axis=-1))
                weights = (magnitude_of(images), magnitude_of(first.image))
        else:
            fields = (first.image - images, second.image - first.image)
        for field, weight in zip(fields, weights):
            smooth = smoothness_loss(field, norm=config.smoothness_norm, weight=weight)
            e_phi = e_phi + config.lambda_phi * sum(_directions(smooth, n))
    loss = e_logit + e_cycle + e_phi + e_change + e_volume + e_gain + e_growth

    moved = (simulated_logits - original_logits) * (1.0 - 2.0 * task)
    inject_shift, remove_shift = _directions(moved, n)
    metrics = {
        "loss": loss,
        "logit": e_logit,
        "cycle": e_cycle,
        "smooth": e_phi,
        "change": e_change,
        "volume": e_volume,
        "gain": e_gain,
        "growth_smooth": e_growth,
        "shift_inject": inject_shift,
        "shift_remove": remove_shift,
        "displacement": magnitude,
    }
    return loss, (metrics, variables.get("batch_stats", {}))
