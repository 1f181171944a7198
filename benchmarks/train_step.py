"""Time one simulator training step (both directions, both cycles, one Adam step).

    python benchmarks/train_step.py --size 32 --batches 1 4 8          # 2-core CPU
    python benchmarks/train_step.py --size 64 --batches 1 4 8 --repeats 20   # GPU

Uses the exact jitted step of ``train.simulator`` (donated state, frozen classifier as an
argument) on random volumes, with the paper's 3D architectures. Prints the machine,
versions, the median and spread of ``--repeats`` timed steps after warm-up, and volumes/s
(each step simulates 2 x batch volumes there and back). JSON lines go to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxinterp.nn import ClassifierConfig, SimulatorConfig
from train import parallel
from train.classifier import init_state as init_classifier
from train.classifier import variables_of
from train.config import OptimConfig, TrainConfig
from train.simulator import init_state as init_simulator
from train.simulator import make_step


def machine() -> dict:
    device = jax.devices()[0]
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": __import__("os").cpu_count(),
        "device": getattr(device, "device_kind", str(device)),
        "device_count": jax.device_count(),
        "jax": jax.__version__,
        "flax": __import__("flax").__version__,
    }


def time_step(size: int, batch: int, repeats: int, dtype: str, implementation: str) -> dict:
    config = TrainConfig(
        classifier=ClassifierConfig.original(),
        simulator=SimulatorConfig(condconv_implementation=implementation),
        simulator_optim=OptimConfig(batch_size=batch),
        dtype=dtype,
    )
    rng = np.random.default_rng(0)
    sample = rng.normal(size=(2, size, size, size, 1)).astype(np.float32)
    mesh = parallel.make_mesh()
    classifier, clf_state, _ = init_classifier(config, sample)
    model, state, optimizer = init_simulator(config, sample)
    step = make_step(model, classifier, optimizer, config, mesh)
    state = parallel.put_replicated(state, mesh)
    clf_vars = parallel.put_replicated(variables_of(clf_state), mesh)
    controls = parallel.put_batch(
        rng.normal(size=(batch, size, size, size, 1)).astype(np.float32), mesh, batch
    )
    patients = parallel.put_batch(
        rng.normal(size=(batch, size, size, size, 1)).astype(np.float32), mesh, batch
    )
    start = time.perf_counter()
    state, metrics = step(state, (clf_vars, controls, patients))
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        state, metrics = step(state, (clf_vars, controls, patients))
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {
        "what": "simulator_train_step",
        "size": size,
        "batch_per_direction": batch,
        "dtype": dtype,
        "condconv": implementation,
        "median_s": median,
        "min_s": min(times),
        "max_s": max(times),
        "repeats": repeats,
        "first_call_s": compile_s,
        "volumes_per_s": 2 * batch / median,
        "loss_finite": bool(np.isfinite(float(metrics["loss"]))),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=32, help="edge of the cubic volume")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--condconv", choices=["experts", "per_example"], default="experts")
    parser.add_argument("--out", help="append JSON lines to this file")
    args = parser.parse_args()
    info = machine()
    print(json.dumps({"machine": info}))
    rows = []
    for batch in args.batches:
        row = time_step(args.size, batch, args.repeats, args.dtype, args.condconv)
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps({**row, **info}) + "\n")
    print("\n| size | batch/direction | median step (s) | volumes/s | device |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['size']}^3 | {r['batch_per_direction']} | {r['median_s']:.3f} | "
            f"{r['volumes_per_s']:.2f} | {info['device']} |"
        )


if __name__ == "__main__":
    jnp.zeros(())  # initialise the backend before timing anything
    main()
