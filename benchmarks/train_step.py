"""Time one simulator training step (both directions, both cycles, one Adam step).

    python benchmarks/train_step.py --size 32 --batches 1 4 8          # 2-core CPU
    python benchmarks/train_step.py --size 64 --batches 1 4 8 --repeats 20   # GPU
    python benchmarks/train_step.py --config brain3d_64 --repeats 20         # a config's run

Uses the exact jitted steps of ``train.simulator`` and ``train.classifier`` (donated state,
frozen classifier as an argument) on random volumes. Without ``--config``: the paper's 3D
architectures at ``--size``. With ``--config NAME``: that config's networks, volume shape,
batch sizes and objective; the classifier's step is timed too, and the expected training
time of the config's run (steps x median step of each network) is printed. Prints the
machine, versions, the median and spread of ``--repeats`` timed steps after warm-up, and
volumes/s (a simulator step simulates 2 x batch volumes there and back). JSON lines go to
``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxinterp.nn import ClassifierConfig, SimulatorConfig
from jaxinterp.nn.condconv import resolve_implementation
from jaxinterp.synth2d import make_synth2d
from train import parallel
from train.classifier import init_state as init_classifier
from train.classifier import make_step as make_classifier_step
from train.classifier import variables_of
from train.config import DataConfig, OptimConfig, TrainConfig, add_config_arguments, load_config
from train.simulator import init_state as init_simulator
from train.simulator import make_step


def machine() -> dict:
    device = jax.devices()[0]
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "device": getattr(device, "device_kind", str(device)),
        "device_count": jax.device_count(),
        "jax": jax.__version__,
        "flax": __import__("flax").__version__,
    }


def median_steps(step: Callable, state, batch, repeats: int) -> tuple[dict, dict]:
    """Compile and run once, then time ``repeats`` synchronised steps."""
    start = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        state, metrics = step(state, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    timing = {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "repeats": repeats,
        "first_call_s": first,
    }
    return timing, metrics


def image_shape(config: TrainConfig) -> tuple[int, ...]:
    """The spatial shape the config's networks see: synth2d's images, else ``data.shape``."""
    if config.data.kind == "synth2d":
        return make_synth2d(n_per_group=1, seed=0)["images"].shape[1:-1]
    return tuple(config.data.shape)


def volumes(rng: np.random.Generator, n: int, shape: tuple[int, ...]) -> np.ndarray:
    return rng.normal(size=(n, *shape, 1)).astype(np.float32)


def time_simulator(config: TrainConfig, repeats: int) -> dict:
    batch, shape = config.simulator_optim.batch_size, image_shape(config)
    rng = np.random.default_rng(0)
    sample = volumes(rng, 2, shape)
    mesh = parallel.make_mesh()
    classifier, clf_state, _ = init_classifier(config, sample)
    model, state, optimizer = init_simulator(config, sample)
    step = make_step(model, classifier, optimizer, config, mesh)
    state = parallel.put_replicated(state, mesh)
    clf_vars = parallel.put_replicated(variables_of(clf_state), mesh)
    controls = parallel.put_batch(volumes(rng, batch, shape), mesh, batch)
    patients = parallel.put_batch(volumes(rng, batch, shape), mesh, batch)
    timing, metrics = median_steps(step, state, (clf_vars, controls, patients), repeats)
    return {
        "what": "simulator_train_step",
        "batch_per_direction": batch,
        **timing,
        "volumes_per_s": 2 * batch / timing["median_s"],
        "loss_finite": bool(np.isfinite(float(metrics["loss"]))),
    }


def time_classifier(config: TrainConfig, repeats: int) -> dict:
    batch, shape = config.classifier_optim.batch_size, image_shape(config)
    rng = np.random.default_rng(1)
    mesh = parallel.make_mesh()
    model, state, optimizer = init_classifier(config, volumes(rng, 2, shape))
    step = make_classifier_step(model, optimizer, config.seed, mesh)
    state = parallel.put_replicated(state, mesh)
    images = parallel.put_batch(volumes(rng, batch, shape), mesh, batch)
    labels = parallel.put_batch(np.arange(batch) % 2, mesh, batch)
    timing, metrics = median_steps(step, state, (images, labels), repeats)
    return {
        "what": "classifier_train_step",
        "batch": batch,
        **timing,
        "volumes_per_s": batch / timing["median_s"],
        "loss_finite": bool(np.isfinite(float(metrics["loss"]))),
    }


def paper_config(size: int, batch: int, dtype: str, implementation: str) -> TrainConfig:
    """The paper's 3D networks at ``size``^3 (the bottleneck adapts to the size)."""
    return TrainConfig(
        data=DataConfig(shape=(size, size, size)),
        classifier=ClassifierConfig.original(),
        simulator=SimulatorConfig(condconv_implementation=implementation),
        simulator_optim=OptimConfig(batch_size=batch),
        dtype=dtype,
    )


def minutes(steps: int, seconds_per_step: float) -> str:
    return (
        f"{steps} steps x {1e3 * seconds_per_step:.1f} ms = {steps * seconds_per_step / 60:.1f} min"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_config_arguments(parser, workdir_help=None, required=False)  # time a config's steps
    parser.add_argument("--size", type=int, default=32, help="edge of the cubic volume")
    parser.add_argument(
        "--batches",
        type=int,
        nargs="+",
        default=None,
        help="batch per direction (default 1 4 8, or the config's)",
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--condconv", choices=["auto", "experts", "per_example"], default="auto")
    parser.add_argument("--out", help="append JSON lines to this file")
    args = parser.parse_args()
    if args.overrides and not args.config:
        parser.error("--set needs --config")  # fmt: skip
    info = machine()
    print(json.dumps({"machine": info, "args": vars(args)}))
    if args.config:
        base = load_config(args.config, args.overrides)
        base = dataclasses.replace(base, dtype=args.dtype)
        configs = [
            dataclasses.replace(
                base, simulator_optim=dataclasses.replace(base.simulator_optim, batch_size=b)
            )
            for b in args.batches or [base.simulator_optim.batch_size]
        ]
    else:
        configs = [
            paper_config(args.size, b, args.dtype, args.condconv) for b in args.batches or [1, 4, 8]
        ]
    rows = []

    def record(row: dict) -> None:
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps({**row, **info}) + "\n")

    for config in configs:
        common = {
            "config": args.config or "paper_3d",
            "size": "x".join(map(str, image_shape(config))),
            "dtype": config.dtype,
            "condconv": resolve_implementation(config.simulator.condconv_implementation),
        }
        record({**common, **time_simulator(config, args.repeats)})
    if args.config:
        record({**common, **time_classifier(configs[0], args.repeats)})

    print("\n| step | size | batch | median (ms) | volumes/s | device |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        batch = r.get("batch_per_direction", r.get("batch"))
        print(f"| {r['what']} | {r['size']} | {batch} | {1e3 * r['median_s']:.1f} | "
              f"{r['volumes_per_s']:.2f} | {info['device']} |")  # fmt: skip
    if args.config:
        sim = next(r for r in rows if r["what"] == "simulator_train_step")
        clf = rows[-1]
        print(f"\nExpected training time of {args.config} on {info['device']} (steps only; "
              "data generation, evaluation and checkpoints not counted):")  # fmt: skip
        print(f"- classifier: {minutes(base.classifier_optim.steps, clf['median_s'])}")
        print(f"- simulator: {minutes(base.simulator_optim.steps, sim['median_s'])}")


if __name__ == "__main__":
    jnp.zeros(())  # initialise the backend before timing anything
    main()
