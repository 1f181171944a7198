"""Progress on a terminal and metrics as JSON lines a notebook can load."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from tqdm import tqdm

from jaxinterp.atomic import write_text


class NonFiniteLossError(FloatingPointError):
    """Training produced a non-finite loss; the last good checkpoint is kept."""


class Progress:
    """A progress bar (only on a terminal) and ``metrics.jsonl`` in the workdir.

    Lines of steps after ``resume_step`` (logged by a run that was interrupted before its
    next checkpoint) are dropped on start, so the file holds one line per logged step.
    """

    def __init__(self, path: Path, *, total: int, start: int, desc: str, examples_per_step: int):
        self.path = path
        if path.exists():
            kept = [
                line
                for line in path.read_text().splitlines()
                if line.strip() and json.loads(line)["step"] <= start
            ]
            write_text(path, "".join(line + "\n" for line in kept))
        self._file = path.open("a")
        self._bar = tqdm(total=total, initial=start, desc=desc, unit="step", disable=None)
        self._examples = examples_per_step
        self._last = (start, time.perf_counter())

    def log(self, step: int, metrics: dict) -> dict:
        now = time.perf_counter()
        last_step, last_time = self._last
        rate = (step - last_step) * self._examples / max(now - last_time, 1e-9)
        record = {"step": step, **{k: float(v) for k, v in metrics.items()}}
        record["examples_per_s"] = rate
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        shown = {k: f"{v:.3g}" for k, v in record.items() if k not in ("step",)}
        self._bar.set_postfix(shown, refresh=False)
        self._bar.update(step - self._bar.n)
        self._last = (step, now)
        return record

    def close(self) -> None:
        self._bar.close()
        self._file.close()


def check_finite(history: list[tuple[int, dict]]) -> None:
    """Raise ``NonFiniteLossError`` naming the first step whose loss is not finite."""
    for step, metrics in history:
        loss = float(metrics["loss"])
        if not math.isfinite(loss):
            raise NonFiniteLossError(
                f"loss became {loss} at step {step}; training stopped and the last good "
                "checkpoint was kept (lower the learning rate or check the inputs)"
            )


def load_metrics(path: str | Path) -> list[dict]:
    """The metric lines of a workdir's ``metrics.jsonl`` (for notebooks)."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
