"""Speed of jaxinterp against the PyTorch reference of the original code, in ONE process.

For each volume size and batch size, with the same random weights on both sides (the
PyTorch models' state dicts imported by ``jaxinterp.interop``):

* ``forward``: the simulator in inference mode, field and warped image, batch B;
* ``train_step``: one full training step, B controls and B patients: both directions,
  both cycles, frozen classifier, one optimizer step. JAX: jitted ``value_and_grad`` of
  ``jaxinterp.simulator_objective`` plus an ``optax.adam`` update, state donated. PyTorch:
  ``benchmarks.torch_reference.training_step`` with the same options (MSE cycle, L2
  smoothness mean-reduced, ``fused_directions=True``: the same two simulator calls);
* ``explain``: one volume, simulate and take the log volume change (JAX:
  ``jaxinterp.log_volume_change``; PyTorch: the same central differences, ``torch.linalg.det``).

PyTorch runs both CondConv variants: ``loop`` (the original's Python loop over the batch)
and ``batched`` (one grouped convolution). The original simulator takes 64^3 only; at other
sizes BOTH sides use the same widths with the bottleneck's flattened width adapted
(``ConvnetSkipConnection(size=s)``; 16 (s/16)^3 values instead of 1024), which is not the
original model. Timings: warm-up (the first call, JAX's compilation, reported apart), then
the median of ``--repeats`` calls, each synchronised. Ratios are PyTorch / JAX, measured in
this run. Peak memory is reported on GPUs only. ``--dtype bfloat16``: JAX computes the
convolutions and dense layers in bfloat16 (float32 parameters); PyTorch runs under
``torch.autocast(bfloat16)``, where the reference's ``loop`` CondConv fails on the CPU (its
``tensordot`` mixes dtypes; on a GPU it runs); a failure is recorded and the run goes on.
``--precision highest``: full float32 on both sides (no TF32). ``--profile DIR``: traces of
the largest batch's training step (``benchmarks/trace_summary.py DIR`` reads them).
``benchmarks/gpu_suite.sh`` runs every GPU measurement of RESULTS.md in one call.

Run from the repository root (CPU smoke test, about a minute on 2 cores; ``python
benchmarks/compare_torch.py`` works too)::

    python -m benchmarks.compare_torch --sizes 32 --batches 1 --repeats 2

and unchanged on a GPU (defaults: sizes 32 64, batches 1 4 8, 5 repeats)::

    python -m benchmarks.compare_torch --out results.jsonl
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib.metadata
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

# Let PyTorch share the GPU, and make JAX's peak-memory statistic mean something.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
if not __package__:  # run as a file, python benchmarks/compare_torch.py: find the packages
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import flax  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import torch  # noqa: E402
from torch.nn import functional as F  # noqa: E402

import jaxinterp  # noqa: E402
from benchmarks.torch_reference import (  # noqa: E402
    Classifier3D,
    ConvnetSkipConnection,
    training_step,
    warp,
)
from jaxinterp.interop import (  # noqa: E402
    classifier_variables_from_torch,
    simulator_variables_from_torch,
)
from jaxinterp.nn import Classifier, ClassifierConfig, Simulator, SimulatorConfig  # noqa: E402
from jaxinterp.nn.condconv import resolve_implementation  # noqa: E402

TORCH_VARIANTS = ("loop", "batched")
DELTA, LAMBDA_PHI, LEARNING_RATE = 12.5, 0.02, 1e-4
INJECT_CODE, REMOVE_CODE = -1.0, 1.0  # the original's codes (SimulatorConfig.original())
OPS = ("explain", "forward", "train_step")
PROFILE_STEPS = 3  # training steps traced with --profile


# ---------------------------------------------------------------- PyTorch models at any size


def flat_features(size: int) -> int:
    """Flattened width of the last encoder level (16 channels at ``size / 16``)."""
    return 16 * (size // 16) ** 3


def torch_simulator(size: int, impl: str) -> ConvnetSkipConnection:
    """The original simulator at 64^3, the one with a resized bottleneck elsewhere."""
    return ConvnetSkipConnection(condconv_impl=impl, size=size)


def torch_log_volume_change(displacement: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """``-log max(det(I + du/dx), eps)`` of ``(N, 3, D, H, W)``, central differences inside,
    half the one-sided difference at the border (edge replication), as
    ``jaxinterp.log_volume_change``. Returns ``(N, D, H, W)``."""
    padded = F.pad(displacement, (1,) * 6, mode="replicate")
    inner = (slice(None), slice(None), slice(1, -1), slice(1, -1), slice(1, -1))
    columns = []
    for axis in range(3):
        hi, lo = list(inner), list(inner)
        hi[2 + axis], lo[2 + axis] = slice(2, None), slice(None, -2)
        columns.append(0.5 * (padded[tuple(hi)] - padded[tuple(lo)]))  # d u / d x_axis
    grad = torch.stack(columns, dim=-1).permute(0, 2, 3, 4, 1, 5)  # (N, D, H, W, i, j)
    jac = grad + torch.eye(3, dtype=grad.dtype, device=grad.device)
    return -torch.log(torch.clamp(torch.linalg.det(jac), min=eps))


# ---------------------------------------------------------------- timing


def median_time(fn: Callable[[], Any], sync: Callable[[Any], Any], repeats: int) -> dict:
    """First call (compilation, warm-up) apart, then the median of ``repeats`` calls."""
    start = time.perf_counter()
    result = sync(fn())
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        sync(fn())
        times.append(time.perf_counter() - start)
    return {
        "median_s": statistics.median(times),
        "times_s": [round(t, 6) for t in times],
        "first_call_s": round(first, 6),
        "result": result,
    }


def machine_info() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": cpu,
        "cores": cores,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "jax_devices": [str(d) for d in jax.devices()],
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "versions": {
            "jax": jax.__version__,
            "jaxlib": importlib.metadata.version("jaxlib"),
            "flax": flax.__version__,
            "optax": optax.__version__,
            "torch": torch.__version__,
            "numpy": np.__version__,
            "jaxinterp": jaxinterp.__version__,
        },
    }


class Bench:
    """Both frameworks on one device each, JSON lines out, rows kept for the table."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.rows: list[dict] = []
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.jax_device = jax.devices()[0]
        self.jax_dtype = jnp.bfloat16 if args.dtype == "bfloat16" else None
        self.out = open(args.out, "a") if args.out else None
        self.profiles: list[Callable[[], None]] = []  # run after the timings of a size

    def record(self, row: dict) -> None:
        row = {"dtype": self.args.dtype, "precision": self.args.precision, **row}
        self.rows.append(row)
        line = json.dumps(row)
        print(line, flush=True)
        if self.out:
            self.out.write(line + "\n")
            self.out.flush()

    # -- synchronisation and memory, per framework

    def torch_sync(self, result: Any) -> Any:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return result

    def torch_autocast(self):
        return torch.autocast(
            self.device.type, dtype=torch.bfloat16, enabled=self.args.dtype == "bfloat16"
        )

    def torch_memory(self, reset: bool = False) -> int | None:
        if self.device.type != "cuda":
            return None
        if reset:
            torch.cuda.reset_peak_memory_stats()
            return None
        return torch.cuda.max_memory_allocated()

    def jax_memory(self) -> int | None:
        stats = self.jax_device.memory_stats() if self.jax_device.platform == "gpu" else None
        return stats.get("peak_bytes_in_use") if stats else None

    # -- one size

    def run_size(self, size: int) -> None:
        args = self.args
        torch.manual_seed(size)
        sim_t = torch_simulator(size, "batched")
        clf_t = Classifier3D(flat_features=flat_features(size))
        sim_state, clf_state = sim_t.state_dict(), clf_t.state_dict()
        spatial = (size,) * 3
        variables = simulator_variables_from_torch(sim_state, spatial_shape=spatial)
        clf_variables = classifier_variables_from_torch(clf_state, spatial_shape=spatial)
        variables, clf_variables = jax.device_put((variables, clf_variables), self.jax_device)
        sim_config = dataclasses.replace(
            SimulatorConfig.original(), condconv_implementation=args.condconv
        )
        sim = Simulator(sim_config, dtype=self.jax_dtype)
        clf = Classifier(ClassifierConfig.original(), dtype=self.jax_dtype)
        fns = jax_functions(sim, clf)
        clf_t = clf_t.to(self.device).eval()
        models = {}
        for impl in TORCH_VARIANTS:
            model = torch_simulator(size, impl)
            model.load_state_dict(sim_state)
            models[impl] = model.to(self.device)

        rng = np.random.default_rng(size)
        one = rng.normal(size=(1, 1, *spatial)).astype(np.float32)
        if "explain" in args.ops:
            self.explain(size, fns, variables, models, one)
        for batch in args.batches:
            x = rng.normal(size=(batch, 1, *spatial)).astype(np.float32)
            y = rng.normal(size=(batch, 1, *spatial)).astype(np.float32)
            if "forward" in args.ops:
                self.forward(size, batch, fns, variables, models, x)
            if "train_step" in args.ops:
                self.train_step(size, batch, fns, variables, clf_variables, models, clf_t, x, y)
        self.run_profiles()

    def to_jax(self, x: np.ndarray) -> jax.Array:
        return jax.device_put(np.moveaxis(x, 1, -1), self.jax_device)  # channels-last

    def to_torch(self, x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(x).to(self.device)

    def measure_jax(self, base: dict, fn: Callable[[], Any], check=None) -> Any:
        """Time ``fn``, record it; returns the first call's result. ``check(result)`` gives
        extra fields for the record."""
        m = median_time(fn, jax.block_until_ready, self.args.repeats)
        result = m.pop("result")
        variant = resolve_implementation(self.args.condconv)
        row = {**base, "framework": "jax", "variant": variant, **m}
        self.record({**row, "peak_bytes": self.jax_memory(), **(check(result) if check else {})})
        return result

    def measure_torch(self, base: dict, impl: str, fn: Callable[[], Any], check=None) -> None:
        """As ``measure_jax``, for PyTorch (peak memory measured from here). A variant that
        fails (the reference's ``loop`` CondConv mixes dtypes under bfloat16 autocast) is
        recorded with its error and the run goes on."""
        row = {**base, "framework": "torch", "variant": impl}
        self.torch_memory(reset=True)
        try:
            m = median_time(fn, self.torch_sync, self.args.repeats)
        except RuntimeError as err:
            self.record({**row, "median_s": None, "error": str(err).splitlines()[0]})
            return
        result = m.pop("result")
        row.update(m)
        self.record({**row, "peak_bytes": self.torch_memory(), **(check(result) if check else {})})

    def explain(self, size, fns, variables, models, one) -> None:
        xj, xt = self.to_jax(one), self.to_torch(one)
        base = {"op": "explain", "size": size, "batch": 1}
        reference = self.measure_jax(base, lambda: fns["explain"](variables, xj))
        reference = np.asarray(reference, np.float32)

        def run(model):
            with torch.no_grad(), self.torch_autocast():
                field = model(xt, INJECT_CODE)
            return torch_log_volume_change(field.float())

        def check(result):
            return {"max_abs_diff_vs_jax": float(np.abs(result.cpu().numpy() - reference).max())}

        for impl, model in models.items():
            self.measure_torch(base, impl, functools.partial(run, model.eval()), check)

    def forward(self, size, batch, fns, variables, models, x) -> None:
        xj, xt = self.to_jax(x), self.to_torch(x)
        task = jnp.asarray(np.arange(batch) % 2)  # inject, remove, inject, ...
        codes = torch.where(torch.arange(batch) % 2 == 0, INJECT_CODE, REMOVE_CODE)
        codes = codes.to(self.device)
        base = {"op": "forward", "size": size, "batch": batch}
        _, reference = self.measure_jax(base, lambda: fns["forward"](variables, xj, task))
        reference = np.asarray(reference, np.float32)  # the field, channels-last

        def run(model):
            with torch.no_grad(), self.torch_autocast():
                field = model(xt, codes)
                return field, warp(xt, field.float())

        def check(result):
            field = np.moveaxis(result[0].float().cpu().numpy(), 1, -1)
            return {"max_abs_diff_vs_jax": float(np.abs(field - reference).max())}

        for impl, model in models.items():
            self.measure_torch(base, impl, functools.partial(run, model.eval()), check)

    def train_step(self, size, batch, fns, variables, clf_variables, models, clf_t, x, y):
        xj, yj, xt, yt = self.to_jax(x), self.to_jax(y), self.to_torch(x), self.to_torch(y)
        base = {"op": "train_step", "size": size, "batch": batch}
        # The step donates its state: give it copies, the other ops keep the originals.
        params, batch_stats = jax.tree.map(
            jnp.copy, (variables["params"], variables["batch_stats"])
        )
        # Committed to the device like the step's outputs, or the second call recompiles.
        state = [jax.device_put((params, batch_stats, fns["tx"].init(params)), self.jax_device)]
        key = jax.random.key(0)

        def run_jax():
            state[0], loss = fns["train_step"](state[0], clf_variables, xj, yj, key)
            return loss, state[0]  # wait for the new state too, not only the loss

        # The first step starts from the same weights on both sides; the losses differ only
        # by the routing dropout's draws.
        self.measure_jax(base, run_jax, lambda result: {"first_loss": float(result[0])})
        if self.profiling(batch):
            self.profiles.append(functools.partial(self.profile_jax, run_jax, size, batch))

        def run(model, opt):
            with self.torch_autocast():
                return training_step(
                    model, clf_t, opt, xt, yt, delta=DELTA, lambda_phi=LAMBDA_PHI,
                    inject_code=INJECT_CODE, remove_code=REMOVE_CODE, cycle="mse",
                    smoothness_reduction="mean", fused_directions=True,
                )  # fmt: skip

        for impl, model in models.items():
            fresh = torch_simulator(size, impl).to(self.device)
            fresh.load_state_dict(model.state_dict())
            opt = torch.optim.Adam(fresh.parameters(), lr=LEARNING_RATE)
            first_loss = lambda loss: {"first_loss": loss}
            self.measure_torch(base, impl, functools.partial(run, fresh, opt), first_loss)
            if self.profiling(batch):
                run_torch = functools.partial(run, fresh, opt)
                self.profiles.append(
                    functools.partial(self.profile_torch, run_torch, impl, size, batch)
                )

    # -- profiles of the training step (--profile DIR), at the largest batch only

    def run_profiles(self) -> None:
        """The profiles, once every timing of the size is recorded: a profiler that fails
        costs no timing."""
        for profile in self.profiles:
            try:
                profile()
            except Exception as err:  # noqa: BLE001 - a profile is optional; say why and go on
                print(f"# profile failed: {type(err).__name__}: {err}", flush=True)
        self.profiles.clear()

    def profile_jax(self, fn: Callable[[], Any], size: int, batch: int) -> None:
        with jax.profiler.trace(self.trace_dir("jax", size, batch), create_perfetto_trace=True):
            for _ in range(PROFILE_STEPS):
                jax.block_until_ready(fn())

    def profiling(self, batch: int) -> bool:
        return bool(self.args.profile) and batch == max(self.args.batches)

    def trace_dir(self, name: str, size: int, batch: int) -> str:
        return os.path.join(self.args.profile, f"{name}_{size}_b{batch}_{self.args.dtype}")

    def profile_torch(self, fn: Callable[[], Any], impl: str, size: int, batch: int) -> None:
        """``PROFILE_STEPS`` steps under ``torch.profiler``: a Chrome trace and the table of
        the device kernels that took the most time."""
        activities = [torch.profiler.ProfilerActivity.CPU]
        if self.device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        with torch.profiler.profile(activities=activities) as prof:
            for _ in range(PROFILE_STEPS):
                self.torch_sync(fn())
        os.makedirs(self.args.profile, exist_ok=True)
        prof.export_chrome_trace(self.trace_dir(f"torch_{impl}", size, batch) + ".json")
        sort = "self_cuda_time_total" if self.device.type == "cuda" else "self_cpu_time_total"
        print(f"# torch {impl}, {size}^3, batch {batch}, {PROFILE_STEPS} steps:", flush=True)
        print(prof.key_averages().table(sort_by=sort, row_limit=15), flush=True)


def jax_functions(sim: Simulator, clf: Classifier) -> dict:
    """The jitted JAX side: forward, training step (state donated) and explanation."""
    config = jaxinterp.ObjectiveConfig(
        delta=DELTA, cycle_norm="l2", lambda_phi=LAMBDA_PHI, smoothness_reduction="mean"
    )
    tx = optax.adam(LEARNING_RATE)
    objective = functools.partial(
        jaxinterp.simulator_objective, simulator=sim, classifier=clf, config=config
    )

    @jax.jit
    def forward(variables, x, task):
        out = sim.apply(variables, x, task)
        return out.image, out.displacement

    @functools.partial(jax.jit, donate_argnums=0)
    def train_step(state, clf_variables, x, y, key):
        params, batch_stats, opt_state = state
        grad_fn = jax.value_and_grad(objective, has_aux=True)
        (loss, (_, batch_stats)), grads = grad_fn(params, batch_stats, clf_variables, x, y, key)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), batch_stats, opt_state), loss

    @jax.jit
    def explain(variables, x):
        out = sim.apply(variables, x, jnp.full((x.shape[0],), jaxinterp.INJECT))
        return jaxinterp.log_volume_change(out.displacement)

    return {"forward": forward, "train_step": train_step, "explain": explain, "tx": tx}


# ---------------------------------------------------------------- report


def markdown_table(rows: list[dict]) -> str:
    """One line per (op, size, batch): medians in ms and PyTorch / JAX ratios."""
    keyed: dict[tuple, dict[str, float]] = {}
    for row in rows:
        name = "jax" if row["framework"] == "jax" else f"torch {row['variant']}"
        keyed.setdefault((row["op"], row["size"], row["batch"]), {})[name] = row["median_s"]
    lines = [
        "| op | size | batch | JAX (ms) | torch loop (ms) | torch batched (ms) "
        "| loop / JAX | batched / JAX |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (op, size, batch), t in keyed.items():
        ok = lambda name: t.get(name) is not None  # noqa: B023
        ms = lambda name: f"{1e3 * t[name]:.1f}" if ok(name) else "failed"  # noqa: B023
        ratio = lambda name: f"{t[name] / t['jax']:.2f}x" if ok(name) and ok("jax") else "-"  # noqa: B023
        lines.append(
            f"| {op} | {size}^3 | {batch} | {ms('jax')} | {ms('torch loop')} "
            f"| {ms('torch batched')} | {ratio('torch loop')} | {ratio('torch batched')} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64], help="volume edge")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--repeats", type=int, default=5, help="timed calls after warm-up")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument(
        "--precision",
        choices=("default", "highest"),
        default="default",
        help="float32 convolutions and matrix products: 'default' lets both frameworks use "
        "TF32 on GPUs that have it (JAX's default; PyTorch's default for convolutions, "
        "switched on here for its matrix products too), 'highest' keeps full float32 on both",
    )
    parser.add_argument(
        "--condconv",
        choices=("auto", "experts", "per_example"),
        default="auto",
        help="jaxinterp's CondConv implementation (auto: experts on CPUs, per-example elsewhere)",
    )
    parser.add_argument(
        "--ops", nargs="+", choices=OPS, default=list(OPS), help="what to time (default: all)"
    )
    parser.add_argument("--out", default=None, help="append the JSON lines to this file")
    parser.add_argument(
        "--profile",
        metavar="DIR",
        default=None,
        help=f"trace {PROFILE_STEPS} training steps of each framework at the largest batch "
        "into DIR (JAX: jax.profiler with a Perfetto trace; PyTorch: Chrome traces)",
    )
    args = parser.parse_args(argv)
    bad = [s for s in args.sizes if s < 16 or s % 16]
    if bad:
        parser.error(f"sizes must be positive multiples of 16 (4 poolings), got {bad}")
    if args.repeats < 1 or min(args.batches) < 1:
        parser.error("--repeats and --batches must be >= 1")
    return args


def set_precision(precision: str) -> None:
    """The same float32 arithmetic on both sides (see ``--precision``)."""
    tf32 = precision == "default"
    jax.config.update("jax_default_matmul_precision", None if tf32 else "highest")
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    set_precision(args.precision)
    info = machine_info()
    print(json.dumps({"machine": info, "args": vars(args)}), flush=True)
    bench = Bench(args)
    for size in args.sizes:
        if size != 64:
            print(
                f"# {size}^3: the original simulator takes 64^3 only; both sides use its widths "
                f"with the bottleneck resized ({flat_features(size)} flattened values)",
                flush=True,
            )
        bench.run_size(size)
    print()
    print(
        f"Machine: {info['cpu']}, {info['cores']} cores; GPU: {info['gpu'] or 'none'}; "
        f"JAX on {info['jax_devices'][0]}, torch on {bench.device}; dtype {args.dtype}, "
        f"precision {args.precision}; "
        f"JAX CondConv {resolve_implementation(args.condconv)}"
    )
    print(", ".join(f"{k} {v}" for k, v in info["versions"].items()))
    print()
    print(markdown_table(bench.rows))


if __name__ == "__main__":
    sys.exit(main())
