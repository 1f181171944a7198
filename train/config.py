"""Training configurations: frozen dataclasses, built by ``get_config()`` in ``train/configs``.

A config file is a Python file with a ``get_config() -> TrainConfig``; its docstring holds
the command that runs it. ``load_config`` takes a config name (a file in ``train/configs``)
or a path, plus ``key.sub=value`` overrides from the command line.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib
import importlib.util
from pathlib import Path
from typing import Any, Literal

from jaxinterp.nn import ClassifierConfig, SimulatorConfig
from jaxinterp.objective import ObjectiveConfig


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the images come from."""

    kind: Literal["synth2d", "synth3d", "npz", "table"] = "synth2d"
    path: str | None = None  # .npz (images, labels) or a CSV/TSV scan table (kind "table")
    n_per_group: int = 512  # synth2d / synth3d: images per group
    shape: tuple[int, ...] = (32, 32, 32)  # model grid (scan tables and synth3d)
    regions: str | None = None  # synth3d: a regions JSON (None = the shipped pattern)
    test_fraction: float = 0.2  # held-out fraction (subject-level for tables)


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """One network's optimisation: Adam (or SGD), a fixed rate or a cosine decay to 0."""

    steps: int = 1000  # optimizer steps in total (a resumed run continues to this)
    batch_size: int = 8  # global batch (for the simulator: per direction)
    learning_rate: float = 1e-4
    b2: float = 0.999  # Adam's second-moment decay: it remembers gradients for ~1 / (1 - b2) steps
    # "sgd": SGD with heavy-ball momentum ``momentum``. Adam scales every parameter's step to
    # about the learning rate; SGD's steps keep the gradient's proportions.
    optimizer: Literal["adam", "sgd"] = "adam"
    momentum: float = 0.9  # SGD only
    # > 0: gradients of a larger global norm are scaled down to it before the optimizer
    # (with SGD and a norm below the usual one, every step has the same length)
    clip_norm: float = 0.0
    weight_decay: float = 0.0  # decoupled (AdamW) when > 0
    # A simulator's population map (``SimulatorConfig.population_map``): its own SGD with
    # momentum ``momentum`` at this fixed rate (no clipping, no schedule), whatever optimises
    # the network. A free growth map of the same objective stays sharp under SGD and ripples
    # under Adam (benchmarks/RESULTS.md section 3, "A free map by SGD"; 0.05 is its rate).
    population_learning_rate: float = 0.05
    schedule: Literal["constant", "cosine"] = "constant"  # cosine: from learning_rate to 0 at steps
    log_every: int = 50  # steps between metric lines
    checkpoint_every: int = 500  # steps between checkpoints (and one at the end)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything one experiment needs: data, both networks, their training."""

    name: str = "experiment"
    data: DataConfig = DataConfig()
    classifier: ClassifierConfig = ClassifierConfig()
    classifier_optim: OptimConfig = OptimConfig(steps=1000, batch_size=32, learning_rate=1e-3)
    simulator: SimulatorConfig = SimulatorConfig()
    simulator_optim: OptimConfig = OptimConfig()
    objective: ObjectiveConfig = ObjectiveConfig()
    seed: int = 0  # drives the data order, the split, initialisation and dropout
    # The simulator's own initialisation, dropout and batch order, where it is not ``seed``:
    # simulators trained with different values against one classifier (the data and split
    # stay those of ``seed``) form an ensemble whose maps can be averaged.
    simulator_seed: int | None = None
    # compute dtype of the simulator's convolutions and dense layers (BatchNorm stays
    # float32). bfloat16: 1.7x faster on an H200; one run each in 2D and 3D scored within
    # the spread of float32 runs (benchmarks/RESULTS.md sections 3 and 4)
    dtype: Literal["float32", "bfloat16"] = "float32"
    keep_checkpoints: int = 3  # checkpoints kept per network


def to_dict(config: Any) -> Any:
    """A JSON-ready dict of a (nested) config dataclass."""
    if dataclasses.is_dataclass(config):
        return {f.name: to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, tuple | list):
        return [to_dict(v) for v in config]
    return config


def override(config: Any, assignment: str) -> Any:
    """Apply ``"a.b=value"`` (value a Python literal, or a bare string) to a config."""
    if "=" not in assignment:
        raise ValueError(
            f"override {assignment!r} must look like key=value, e.g. objective.delta=5"
        )
    key, raw = assignment.split("=", 1)
    path = key.strip().split(".")
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    return _replace(config, path, value, key)


def _replace(config: Any, path: list[str], value: Any, key: str) -> Any:
    names = {f.name for f in dataclasses.fields(config)}
    if path[0] not in names:
        raise ValueError(f"unknown config key {key!r}: {path[0]!r} is not one of {sorted(names)}")
    current = getattr(config, path[0])
    if len(path) > 1:
        if not dataclasses.is_dataclass(current):
            raise ValueError(f"unknown config key {key!r}: {path[0]!r} has no sub-keys")
        value = _replace(current, path[1:], value, key)
    elif isinstance(current, tuple) and isinstance(value, list | tuple):
        value = tuple(value)
    return dataclasses.replace(config, **{path[0]: value})


CONFIG_DIR = Path(__file__).parent / "configs"


def available_configs() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.py") if not p.stem.startswith("_"))


def load_config(name_or_path: str, overrides: tuple[str, ...] | list[str] = ()) -> TrainConfig:
    """A config by name (``train/configs/NAME.py``) or file path, with overrides applied."""
    path = Path(name_or_path)
    if path.suffix == ".py":
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist")
        spec = importlib.util.spec_from_file_location(f"_jaxinterp_config_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    elif name_or_path in available_configs():
        module = importlib.import_module(f"train.configs.{name_or_path}")
    else:
        raise ValueError(
            f"unknown config {name_or_path!r}: use one of {available_configs()} or a .py file"
        )
    config = module.get_config()
    for assignment in overrides:
        config = override(config, assignment)
    return config


def add_config_arguments(
    parser: argparse.ArgumentParser, *, workdir_help: str | None, required: bool = True
) -> None:
    """``--config``, ``--workdir`` and repeatable ``--set KEY=VALUE`` (into ``overrides``):
    the options of every command that trains or uses trained models. ``workdir_help=None``
    leaves ``--workdir`` out; ``required=False`` makes ``--config`` optional (benchmarks)."""
    parser.add_argument(
        "--config",
        required=required,
        help=f"a config name ({', '.join(available_configs())}) or a path to a .py file "
        "whose get_config() returns a TrainConfig (to use trained models: the one they "
        "were trained with)",
    )
    if workdir_help is not None:
        parser.add_argument("--workdir", required=True, help=workdir_help)
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set simulator_optim.steps=200 "
        "--set objective.delta=5 (repeatable; values are Python literals)",
    )
