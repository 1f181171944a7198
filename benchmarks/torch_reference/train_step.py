"""Reference training steps in PyTorch: jaxinterp's fused step and the original iteration.

Conventions: channels-first tensors ``(N, 1, 64, 64, 64)``; the simulator returns a voxel-unit
displacement field ``(N, 3, D, H, W)`` (channel k moves axis k) used by the pull-back
``warp``; the classifier returns ``(N,)`` logits. ``x`` holds controls, ``y`` patients.
The classifier is frozen: it runs in eval mode, its parameters get no gradient (their
``requires_grad`` is switched off for the step and restored afterwards) and its BatchNorm
statistics do not move. The simulator runs in train mode for every pass.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

import torch
from torch import nn

from .models import as_code
from .warp import warp

__all__ = [
    "CYCLE_LOSSES",
    "ORIGINAL_OPTIMIZER_NAMES",
    "SMOOTHNESS_REDUCTIONS",
    "cycle_loss",
    "l1_smoothness_loss",
    "logit_shift_loss",
    "make_original_optimizers",
    "original_hinge_loss",
    "original_training_iteration",
    "smoothness_loss",
    "training_step",
]

CYCLE_LOSSES = ("l1", "mse")
ORIGINAL_OPTIMIZER_NAMES = ("shift_inject", "shift_remove", "cycle_inject", "cycle_remove")


@contextlib.contextmanager
def _frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and ``requires_grad=False`` for ``model`` inside the block, then restore."""
    was_training = model.training
    flags = [p.requires_grad for p in model.parameters()]
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(flag)
        model.train(was_training)


def _forward_differences(u: torch.Tensor) -> list[torch.Tensor]:
    return [torch.diff(u, dim=axis) for axis in range(2, u.ndim)]


SMOOTHNESS_REDUCTIONS = ("sum", "mean")


def smoothness_loss(u: torch.Tensor, *, reduction: str = "sum") -> torch.Tensor:
    """Diffusion regulariser (paper eq. 5): per example the sum over voxels, components and
    axes of squared forward differences of ``u`` ``(N, 3, D, H, W)``; mean over the batch.

    ``reduction="mean"`` averages over voxels instead of summing: for each axis the mean over
    the voxels that have its difference of the sum over components, summed over the axes
    (``jaxinterp.smoothness_loss(reduction="mean")``).
    """
    if reduction == "sum":
        per_example = sum(g.pow(2).flatten(1).sum(1) for g in _forward_differences(u))
    elif reduction == "mean":
        per_example = sum(g.pow(2).sum(1).flatten(1).mean(1) for g in _forward_differences(u))
    else:
        raise ValueError(f"reduction must be one of {SMOOTHNESS_REDUCTIONS}, got {reduction!r}")
    return per_example.mean()


def l1_smoothness_loss(u: torch.Tensor) -> torch.Tensor:
    """The original code's regulariser: for each axis the mean absolute forward difference
    (over batch, components and voxels), summed over the three axes; not yet weighted."""
    return sum(g.abs().mean() for g in _forward_differences(u))


def logit_shift_loss(
    p_orig: torch.Tensor, p_sim: torch.Tensor, *, direction: float, delta: float
) -> torch.Tensor:
    """Paper eq. 1 for one direction: ``mean(max(direction * (p_orig - p_sim), -delta))``.

    ``direction = +1`` asks the simulated logit to rise by at least ``delta`` (inject disease
    when a positive logit means diseased), ``-1`` asks it to fall (remove).
    """
    return torch.clamp(direction * (p_orig - p_sim), min=-delta).mean()


def cycle_loss(cycled: torch.Tensor, original: torch.Tensor, *, kind: str = "l1") -> torch.Tensor:
    """Mean over every element of ``|cycled - original|`` (``"l1"``) or its square (``"mse"``)."""
    if kind == "l1":
        return (cycled - original).abs().mean()
    if kind == "mse":
        return (cycled - original).pow(2).mean()
    raise ValueError(f"kind must be one of {CYCLE_LOSSES}, got {kind!r}")


def training_step(
    sim: nn.Module,
    clf: nn.Module,
    opt: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    delta: float,
    lambda_phi: float,
    inject_code: float = 0.0,
    remove_code: float = 1.0,
    cycle: str = "l1",
    smoothness_reduction: str = "sum",
    fused_directions: bool = False,
) -> float:
    """One fused step of the paper objective (SPEC section 3), one backward, one ``opt`` step.

    ``x_hat = warp(x, G(x, inject))``, ``y_hat = warp(y, G(y, remove))``,
    ``x_cyc = warp(x_hat, G(x_hat, remove))``, ``y_cyc = warp(y_hat, G(y_hat, inject))``;
    ``loss = mean(max(P(x) - P(x_hat), -delta)) + mean(max(P(y_hat) - P(y), -delta))
    + cycle(x_cyc, x) + cycle(y_cyc, y) + lambda_phi * sum of smoothness_loss of the four
    fields``. ``P(x)`` and ``P(y)`` are constants; gradients flow through ``P(x_hat)`` and
    ``P(y_hat)`` into the simulator only (a positive logit must mean "diseased").
    The simulator is called four times (once per batch and task) in train mode.
    ``smoothness_reduction`` is passed to ``smoothness_loss``. ``fused_directions=True``
    calls it twice instead, as ``jaxinterp.simulator_objective`` does: on ``[x; y]`` with the
    codes ``[inject..., remove...]``, then on ``[x_hat; y_hat]`` with the codes swapped, so
    BatchNorm's batch statistics (and running averages) cover both directions at once.
    Returns the loss value (before the step) as a Python float.
    """
    if cycle not in CYCLE_LOSSES:
        raise ValueError(f"cycle must be one of {CYCLE_LOSSES}, got {cycle!r}")
    if smoothness_reduction not in SMOOTHNESS_REDUCTIONS:
        raise ValueError(
            f"smoothness_reduction must be one of {SMOOTHNESS_REDUCTIONS}, "
            f"got {smoothness_reduction!r}"
        )
    sim.train()
    with _frozen(clf):
        with torch.no_grad():
            p_x, p_y = clf(x), clf(y)
        if fused_directions:
            n = x.shape[0]
            both = torch.cat([x, y])
            u_first = sim(both, torch.cat([as_code(inject_code, x), as_code(remove_code, y)]))
            simulated = warp(both, u_first)
            u_second = sim(simulated, torch.cat([as_code(remove_code, x), as_code(inject_code, y)]))
            cycled = warp(simulated, u_second)
            u_x, u_y, u_xc, u_yc = (*u_first.split([n, len(y)]), *u_second.split([n, len(y)]))
            x_hat, y_hat = simulated.split([n, len(y)])
            x_cyc, y_cyc = cycled.split([n, len(y)])
        else:
            u_x = sim(x, inject_code)
            x_hat = warp(x, u_x)
            u_y = sim(y, remove_code)
            y_hat = warp(y, u_y)
            u_xc = sim(x_hat, remove_code)
            x_cyc = warp(x_hat, u_xc)
            u_yc = sim(y_hat, inject_code)
            y_cyc = warp(y_hat, u_yc)
        e_logit = logit_shift_loss(p_x, clf(x_hat), direction=1.0, delta=delta)
        e_logit = e_logit + logit_shift_loss(p_y, clf(y_hat), direction=-1.0, delta=delta)
        e_cycle = cycle_loss(x_cyc, x, kind=cycle) + cycle_loss(y_cyc, y, kind=cycle)
        e_phi = sum(
            smoothness_loss(u, reduction=smoothness_reduction) for u in (u_x, u_y, u_xc, u_yc)
        )
        loss = e_logit + e_cycle + lambda_phi * e_phi
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return float(loss.detach())


def original_hinge_loss(
    p_orig: torch.Tensor, p_sim: torch.Tensor, *, sign: float, margin: float = 12.5
) -> torch.Tensor:
    """The original code's shift loss ``mean(relu((p_orig - p_sim) * sign + margin))``.

    With the original labels (positive logit = control) and codes, ``sign`` equals the task
    code: -1 for inject (the logit must fall by ``margin``), +1 for remove (rise by it).
    """
    return torch.relu((p_orig - p_sim) * sign + margin).mean()


def make_original_optimizers(
    sim: nn.Module,
    *,
    lr_shift: float = 2e-4,
    lr_cycle: float = 1e-4,
    weight_decay: float = 1e-4,
) -> dict[str, torch.optim.Optimizer]:
    """Four Adam optimizers over all simulator parameters, keyed by
    ``ORIGINAL_OPTIMIZER_NAMES``, each with its own moment estimates."""
    return {
        name: torch.optim.Adam(
            sim.parameters(),
            lr=lr_shift if name.startswith("shift") else lr_cycle,
            weight_decay=weight_decay,
        )
        for name in ORIGINAL_OPTIMIZER_NAMES
    }


def original_training_iteration(
    sim: nn.Module,
    clf: nn.Module,
    optimizers: Mapping[str, torch.optim.Optimizer],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    margin: float = 12.5,
    smooth_weight: float = 0.001 * 0.04,
    inject_code: float = -1.0,
    remove_code: float = 1.0,
) -> dict[str, float]:
    """One iteration of the original training loop: four optimizer steps, 8 backward passes.

    SPEC section 5 gives the ingredients (hinge ``relu((p_orig - p_sim) * s + 12.5)``, MSE
    cycle, L1 forward-difference smoothness mean-reduced times 0.001 * 0.04, four Adam
    optimizers stepped in turn, 8 backward passes, simulator in train mode for every pass)
    but not their order; this reconstruction runs four phases, each with its own forward:

    1. ``shift_inject`` on controls ``x`` with code ``inject_code``;
    2. ``shift_remove`` on patients ``y`` with ``remove_code``;
    3. ``cycle_inject``: ``x -> x_hat -> x_cyc`` (inject, then remove), MSE to ``x``;
    4. ``cycle_remove``: ``y -> y_hat -> y_cyc`` (remove, then inject), MSE to ``y``.

    Each phase zeroes its optimizer's gradients, backpropagates the task loss (keeping the
    graph), then separately the weighted smoothness of the phase's fields (gradients add up),
    and steps that optimizer. The hinge sign equals the task code, so the codes must be -1/+1
    with a positive logit meaning "control", as in the original ADNI setup.
    Returns each phase's task loss and smoothness term as Python floats.
    """
    missing = set(ORIGINAL_OPTIMIZER_NAMES) - set(optimizers)
    if missing:
        raise ValueError(f"optimizers lacks {sorted(missing)}")
    sim.train()
    losses: dict[str, float] = {}
    with _frozen(clf):
        with torch.no_grad():
            p_x, p_y = clf(x), clf(y)
        for name, image, p_orig, code in (
            ("shift_inject", x, p_x, inject_code),
            ("shift_remove", y, p_y, remove_code),
        ):
            opt = optimizers[name]
            opt.zero_grad(set_to_none=True)
            u = sim(image, code)
            task = original_hinge_loss(p_orig, clf(warp(image, u)), sign=code, margin=margin)
            smooth = smooth_weight * l1_smoothness_loss(u)
            task.backward(retain_graph=True)
            smooth.backward()
            opt.step()
            losses[name], losses[name + "_smooth"] = float(task.detach()), float(smooth.detach())
        for name, image, code, back in (
            ("cycle_inject", x, inject_code, remove_code),
            ("cycle_remove", y, remove_code, inject_code),
        ):
            opt = optimizers[name]
            opt.zero_grad(set_to_none=True)
            u = sim(image, code)
            simulated = warp(image, u)
            u_back = sim(simulated, back)
            task = cycle_loss(warp(simulated, u_back), image, kind="mse")
            smooth = smooth_weight * (l1_smoothness_loss(u) + l1_smoothness_loss(u_back))
            task.backward(retain_graph=True)
            smooth.backward()
            opt.step()
            losses[name], losses[name + "_smooth"] = float(task.detach()), float(smooth.detach())
    return losses
