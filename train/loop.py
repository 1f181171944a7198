"""The one training loop both networks use: resume, step, log, check, checkpoint."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from train import parallel
from train.checkpoint import Checkpoints
from train.config import OptimConfig
from train.progress import Progress, check_finite


def new_state(variables: dict, optimizer) -> dict:
    """A train state at step 0: parameters, BatchNorm statistics, optimizer state (built in
    one jitted call: the optimizer's zeros, made op by op, compiled once per parameter shape)."""

    def build(variables):
        return {
            "step": jnp.zeros((), jnp.int32),
            "params": variables["params"],
            "batch_stats": variables.get("batch_stats", {}),
            "opt_state": optimizer.init(variables["params"]),
        }

    return jax.jit(build)(variables)


def run(
    *,
    workdir: Path,
    state: dict,
    step_fn: Callable[[dict, Any], tuple[dict, dict]],
    batch_fn: Callable[[int], Any],
    optim: OptimConfig,
    meta: dict,
    keep: int,
    desc: str,
    examples_per_step: int,
    mesh,
    may_differ: tuple[str, ...] = (),
) -> dict:
    """Train ``state`` to ``optim.steps`` steps, resuming from ``workdir`` if it holds a
    checkpoint written for the same ``meta`` (but for the settings that start with one of
    ``may_differ``, which are reported; the checkpoints written from then on record
    ``meta``).

    ``step_fn(state, batch) -> (state, metrics)`` is the jitted step (it donates ``state``);
    ``batch_fn(step)`` gives the batch of a step, a pure function of the step so a resumed
    run sees the same data. Checkpoints every ``optim.checkpoint_every`` steps and at the
    end, only after the losses of every step since the last check were found finite.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    checkpoints = Checkpoints(workdir / "checkpoints", keep=keep)
    if checkpoints.latest_step() is not None:
        state = checkpoints.restore(state, expected_meta=meta, may_differ=may_differ)
    state = parallel.put_replicated(state, mesh)
    start = int(state["step"])
    progress = Progress(
        workdir / "metrics.jsonl",
        total=optim.steps,
        start=start,
        desc=desc,
        examples_per_step=examples_per_step,
    )
    pending: list[tuple[int, dict]] = []
    try:
        for step in range(start, optim.steps):
            state, metrics = step_fn(state, batch_fn(step))
            done = step + 1
            if pending:
                # At most two steps in flight: the host prepares the next batch while the
                # devices run, but never queues many steps. (XLA's CPU runtime can deadlock
                # in a cross-device all-reduce when many steps over several host devices
                # are queued at once.)
                jax.block_until_ready(pending[-1][1])
            pending.append((done, metrics))
            last = done == optim.steps
            if done % optim.log_every == 0 or done % optim.checkpoint_every == 0 or last:
                history = jax.device_get(pending)
                pending = []
                check_finite(history)
                if done % optim.log_every == 0 or last:
                    progress.log(done, history[-1][1])
            if done % optim.checkpoint_every == 0 or last:
                checkpoints.save(done, state, meta)
    finally:
        progress.close()
        checkpoints.close()
    return state


def state_shapes(make_state: Callable[[], dict]) -> dict:
    """The shapes and dtypes of the state ``make_state()`` would build, on the default device,
    computed without running it: the target to restore a checkpoint into (compiling a
    network's initialisation only to overwrite it took half a minute on a 2-core CPU)."""
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device),
        jax.eval_shape(make_state),
    )


def restore_final(
    workdir: Path, template: dict, meta: dict, *, command: str, step: int | None = None
) -> dict:
    """The latest checkpointed state of a finished (or interrupted) run in ``workdir`` (or
    the one at ``step``); a clear error naming ``command`` (what trains it) when there is
    none."""
    if not (workdir / "checkpoints").is_dir():
        what = command.removeprefix("train-")
        raise FileNotFoundError(f"no trained {what} in {workdir}; run `jaxinterp {command}` first")
    checkpoints = Checkpoints(workdir / "checkpoints")
    try:
        return checkpoints.restore(template, expected_meta=meta, step=step)
    finally:
        checkpoints.close()


def final_step(workdir: Path) -> int | None:
    """The step of the state `restore_final` restores from ``workdir`` (None if none)."""
    if not (workdir / "checkpoints").is_dir():
        return None
    checkpoints = Checkpoints(workdir / "checkpoints")
    try:
        return checkpoints.latest_step()
    finally:
        checkpoints.close()
