"""Checkpoints through orbax's CheckpointManager, in one place.

A checkpoint holds the train state (step, parameters, optimizer state, BatchNorm
statistics) and a JSON ``meta`` item with the config it was written for. The RNG and the
data position are functions of the seed and the step (``train.datasets``), so restoring
the step restores both. orbax writes each step into a temporary folder and renames it when
complete, so a crash never leaves a half-written checkpoint that looks complete.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp


class CheckpointMismatchError(ValueError):
    """The checkpoint in a workdir was written for another configuration."""


class Checkpoints:
    """Save and restore train states in ``directory`` (keeps the latest ``keep``)."""

    def __init__(self, directory: str | Path, *, keep: int = 3):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            preservation_policy=ocp.checkpoint_managers.LatestN(n=keep),
            create=True,
            enable_async_checkpointing=False,
        )
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "meta")
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state: Any, meta: dict) -> None:
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        self._manager.save(step, args=args, force=True)
        self._manager.wait_until_finished()

    def read_meta(self, step: int | None = None) -> dict:
        step = self.latest_step() if step is None else step
        restored = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return restored["meta"]

    def restore(
        self,
        template: Any,
        *,
        expected_meta: dict,
        step: int | None = None,
        may_differ: tuple[str, ...] = (),
    ) -> Any:
        """Restore the state at ``step`` (default latest) into the structure of ``template``.

        Raises ``CheckpointMismatchError`` naming the differing settings when the checkpoint
        was written for another configuration, instead of a shape error from deep inside.
        Settings whose name starts with one of ``may_differ`` (e.g. ``"objective."``) may
        differ; those that do are reported on stderr.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        meta = self.read_meta(step)
        differences, changed = [], []
        for d in _differences(meta.get("config", {}), expected_meta.get("config", {})):
            (changed if d.startswith(may_differ) else differences).append(d)
        if differences:
            raise CheckpointMismatchError(
                f"checkpoint {self.directory}/{step} was written for another configuration "
                f"({'; '.join(differences[:5])}); use a new workdir or the same config"
                + (
                    " (or train-simulator --change-objective to go on under another objective)"
                    if all(d.startswith("objective.") for d in differences)
                    else ""
                )
            )
        if changed and jax.process_index() == 0:
            print(
                f"{self.directory}: resuming step {step} with {'; '.join(changed)}", file=sys.stderr
            )
        restored = self._manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(template))
        )
        return restored["state"]

    def close(self) -> None:
        self._manager.close()


# Settings that change how fast the same function is computed, not the function or its
# parameters: a checkpoint restores whatever they were when it was written (one trained on a
# GPU with the per-example CondConv explains on a CPU with experts, and the checkpoints
# written before "auto" became the default stay usable).
SPEED_ONLY = ("simulator.condconv_implementation", "simulator.field_barrier")


def _differences(saved: dict, wanted: dict, prefix: str = "") -> list[str]:
    """Settings that differ. A setting the checkpoint does not record at all is a config
    field added after it was written: it is not counted (the field's default is expected
    to keep the old behaviour); nor are the ``SPEED_ONLY`` settings."""
    out = []
    for key in sorted(set(saved) | set(wanted)):
        path = f"{prefix}{key}"
        if key not in saved or any(path == s or path.endswith("." + s) for s in SPEED_ONLY):
            continue
        a, b = saved.get(key), wanted.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif json.dumps(a, sort_keys=True) != json.dumps(b, sort_keys=True):
            out.append(f"{prefix}{key}: checkpoint {a!r}, now {b!r}")
    return out
