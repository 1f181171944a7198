"""jaxinterp's paper training step and forward pass under several implementation variants,
in one process: which is fastest, and what its slowest kernels are.

    python benchmarks/step_variants.py --size 64 --batch 8 --repeats 20 \\
        --variants experts per_example experts+barrier per_example+bf16 --profile DIR

The step is ``compare_torch.py``'s (``jaxinterp.simulator_objective`` with the original's
settings, ``optax.adam``, state donated), from the same random weights and inputs for
every variant. A variant is ``+``-joined tokens:

* ``experts`` / ``per_example``: ``SimulatorConfig.condconv_implementation``;
* ``bf16``: convolutions and dense layers computed in bfloat16 (float32 parameters);
* ``barrier``: the simulator's field passes ``jaxinterp.nn.simulator.gradient_barrier``
  before the warp (``SimulatorConfig.field_barrier``, the library's default; a variant
  without this token runs without it), so the warp's backward pass is written out before
  the output layer's backward reductions read it.

Per variant: median step and forward times (after a compiling warm-up), the first step's
loss and the forward field's largest difference from the first variant (the same function,
up to float rounding and bfloat16), and the device's peak memory so far. ``--profile DIR``
traces 3 steps of each variant and prints its slowest kernels with the XLA operation each
ran (``hlo_op``); with ``XLA_FLAGS=--xla_dump_to=DUMP --xla_dump_hlo_as_text`` set,
``--hlo DUMP`` adds the optimised HLO of those operations' fusions to ``DIR/kernels.txt``.
``benchmarks/gpu_suite.sh`` runs it on a GPU; on a CPU, ``--size 16 --batch 2`` checks it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
import time
from pathlib import Path

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
if not __package__:  # run as a file: find the packages
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.compare_torch import jax_functions, median_time  # noqa: E402
from benchmarks.trace_summary import summarise  # noqa: E402
from jaxinterp.nn import Classifier, ClassifierConfig, Simulator, SimulatorConfig  # noqa: E402

TOKENS = {"experts", "per_example", "bf16", "barrier"}
PROFILE_STEPS = 3


def parse_variant(name: str) -> tuple[SimulatorConfig, object]:
    """``SimulatorConfig`` (the original's, with the variant's options) and compute dtype."""
    tokens = name.split("+")
    unknown = set(tokens) - TOKENS
    if unknown:
        raise SystemExit(f"unknown variant token(s) {sorted(unknown)} in {name!r}; use {TOKENS}")
    config = dataclasses.replace(
        SimulatorConfig.original(),
        condconv_implementation="per_example" if "per_example" in tokens else "experts",
        field_barrier="barrier" in tokens,
    )
    return config, (jnp.bfloat16 if "bf16" in tokens else None)


def fusion_text(dump: Path, op: str, limit: int = 4000) -> str:
    """The instruction ``op`` and the computation it calls, from the newest optimised HLO of
    the training step in an XLA dump folder."""
    files = sorted(
        dump.glob("*jit_train_step*after_optimizations.txt"), key=lambda p: p.stat().st_mtime
    )
    if not files or not op:
        return "(no HLO dump)"
    text = files[-1].read_text()
    line = next((ln for ln in text.splitlines() if re.search(rf"%{re.escape(op)} = ", ln)), None)
    if line is None:
        return f"(no instruction %{op} in {files[-1].name})"
    called = re.search(r"calls=%([\w.\-]+)", line)
    body = ""
    if called:
        match = re.search(rf"\n(%{re.escape(called.group(1))} .*?\n}})", text, re.S)
        body = match.group(1) if match else ""
    return (line.strip() + "\n" + body)[:limit]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8, help="controls and patients each")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--variants", nargs="+", default=["experts", "per_example"])
    parser.add_argument("--profile", metavar="DIR", help="trace each variant's steps into DIR")
    parser.add_argument("--hlo", metavar="DUMP", help="XLA dump folder (see the docstring)")
    parser.add_argument("--top", type=int, default=8, help="kernels listed per variant")
    parser.add_argument("--out", help="append JSON lines to this file")
    args = parser.parse_args(argv)
    configs = {name: parse_variant(name) for name in args.variants}  # fail before compiling

    device = jax.devices()[0]
    print(json.dumps({"device": getattr(device, "device_kind", str(device)),
                      "jax": jax.__version__, "args": vars(args)}), flush=True)  # fmt: skip
    shape = (args.batch, *(args.size,) * 3, 1)
    rng = np.random.default_rng(0)
    x, y = (jax.device_put(rng.normal(size=shape).astype(np.float32)) for _ in range(2))
    task = jnp.asarray(np.arange(args.batch) % 2)
    clf = Classifier(ClassifierConfig.original())
    clf_variables = clf.init(jax.random.key(1), x[:1])
    key = jax.random.key(0)
    out = open(args.out, "a") if args.out else None
    kernels_file = Path(args.profile, "kernels.txt") if args.profile else None
    reference = None
    rows = []
    for name, (config, dtype) in configs.items():
        sim = Simulator(config, dtype=dtype)
        variables = Simulator(config).init(
            {"params": jax.random.key(2), "dropout": jax.random.key(3)}, x[:2], task[:2]
        )
        fns = jax_functions(sim, clf)
        params, stats = jax.tree.map(jnp.copy, (variables["params"], variables["batch_stats"]))
        state = [(params, stats, fns["tx"].init(params))]

        def step(state=state, fns=fns):
            state[0], loss = fns["train_step"](state[0], clf_variables, x, y, key)
            return loss, state[0]

        start = time.perf_counter()
        timed_step = median_time(step, jax.block_until_ready, args.repeats)
        fwd = median_time(
            lambda fns=fns, v=variables: fns["forward"](v, x, task),
            jax.block_until_ready,
            args.repeats,
        )
        field = np.asarray(fwd.pop("result")[1], np.float32)
        if reference is None:
            reference = field
        memory = device.memory_stats() or {}
        row = {
            "variant": name,
            "size": args.size,
            "batch": args.batch,
            "train_step_ms": 1e3 * timed_step["median_s"],
            "forward_ms": 1e3 * fwd["median_s"],
            "step_compile_s": timed_step["first_call_s"],
            "first_loss": float(timed_step["result"][0]),
            "field_max_abs_diff_vs_first": float(np.abs(field - reference).max()),
            "peak_bytes_so_far": memory.get("peak_bytes_in_use"),
            "wall_s": round(time.perf_counter() - start, 1),
        }
        if args.profile:
            trace_dir = Path(args.profile, f"variant_{name}")
            with jax.profiler.trace(str(trace_dir), create_perfetto_trace=True):
                for _ in range(PROFILE_STEPS):
                    jax.block_until_ready(step())
            traces = sorted(trace_dir.glob("plugins/profile/*/perfetto_trace.json.gz"))
            summary = summarise(traces[-1], PROFILE_STEPS, args.top) if traces else {}
            row["kernels"] = summary.get("top", [])
            with open(kernels_file, "a") as f:
                f.write(f"\n######## {name}: {row['train_step_ms']:.1f} ms per step\n")
                for k in row["kernels"]:
                    f.write(f"\n## {k['ms_per_step']:.2f} ms/step x{k['calls_per_step']:.0f} "
                            f"{k['hlo_op']} {k['name']}\n")  # fmt: skip
                    if args.hlo:
                        f.write(fusion_text(Path(args.hlo), k["hlo_op"]) + "\n")
        rows.append(row)
        print(json.dumps(row), flush=True)
        if out:
            out.write(json.dumps(row) + "\n")
            out.flush()

    print(f"\n{shape[1]}^3, batch {args.batch} per direction, {device}:")
    print("| variant | train step (ms) | forward (ms) | first loss | field diff | peak GiB |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        peak = r["peak_bytes_so_far"]
        print(f"| {r['variant']} | {r['train_step_ms']:.1f} | {r['forward_ms']:.2f} "
              f"| {r['first_loss']:.4f} | {r['field_max_abs_diff_vs_first']:.2e} "
              f"| {peak / 2**30 if peak else float('nan'):.2f} |")  # fmt: skip
    for r in rows:
        for k in r.get("kernels", [])[:5]:
            print(f"  {r['variant']}: {k['ms_per_step']:6.2f} ms x{k['calls_per_step']:.0f} "
                  f"{k['hlo_op']} {k['name'][:60]}")  # fmt: skip


if __name__ == "__main__":
    main()
