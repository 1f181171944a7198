"""What the GPU did during a profiled training step: kernels, busy time, idle gaps.

Reads the traces ``compare_torch.py --profile DIR`` writes: JAX's Perfetto trace
(``DIR/jax_*/plugins/profile/*/perfetto_trace.json.gz``; device kernels are the events on
a ``/device:GPU:N`` process's ``Stream`` threads) and PyTorch's Chrome traces
(``DIR/torch_*.json``, ``.json.gz`` too; device kernels have category ``kernel``, copies
and fills ``gpu_memcpy``/``gpu_memset``). For each: the number of device operations, the
summed and the busy time (the union of their intervals, so overlapping streams count
once), the span from the first to the last, and the longest operations by total time.
Busy time far below the step's wall time means the GPU waits for the host (launches,
Python), busy time near it means the kernels themselves bound the step.

    python benchmarks/trace_summary.py DIR [--steps 3]
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
from pathlib import Path

TORCH_DEVICE_CATEGORIES = ("kernel", "gpu_memcpy", "gpu_memset")


def load(path: str | Path) -> list[dict]:
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        data = json.load(f)
    return data["traceEvents"] if isinstance(data, dict) else data


def device_events(events: list[dict]) -> list[dict]:
    """The complete (``ph == "X"``) events that ran on a GPU, in either trace format."""
    if any(e.get("cat") in TORCH_DEVICE_CATEGORIES for e in events):
        return [e for e in events if e.get("ph") == "X" and e.get("cat") in TORCH_DEVICE_CATEGORIES]
    processes, threads = {}, {}
    for e in events:
        if e.get("ph") == "M" and e.get("name") == "process_name":
            processes[e["pid"]] = e["args"]["name"]
        elif e.get("ph") == "M" and e.get("name") == "thread_name":
            threads[(e["pid"], e["tid"])] = e["args"]["name"]
    gpus = {pid for pid, name in processes.items() if name.startswith("/device:GPU")}
    return [
        e
        for e in events
        if e.get("ph") == "X"
        and e.get("pid") in gpus
        and threads.get((e["pid"], e.get("tid")), "").startswith("Stream")
    ]


def union_length(intervals: list[tuple[float, float]]) -> float:
    """Total length covered by ``[start, end)`` intervals."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end <= reach:
            continue
        total += end - max(start, reach)
        reach = end
    return total


def summarise(path: str | Path, steps: int = 1, top: int = 8) -> dict:
    """Per-step figures (times in ms) of the device work in one trace."""
    ops = device_events(load(path))
    if not ops:
        return {"trace": str(path), "device_ops": 0}
    intervals = [(float(e["ts"]), float(e["ts"]) + float(e.get("dur", 0))) for e in ops]
    by_name, calls, hlo_op = collections.Counter(), collections.Counter(), {}
    for e in ops:
        by_name[e["name"]] += float(e.get("dur", 0))
        calls[e["name"]] += 1
        args = e.get("args", {})  # JAX's traces name the XLA operation a kernel ran
        hlo_op.setdefault(e["name"], args.get("hlo_op") or args.get("long_name") or "")
    total = sum(by_name.values())
    return {
        "trace": str(path),
        "steps": steps,
        "device_ops_per_step": len(ops) / steps,
        "summed_ms_per_step": total / 1e3 / steps,
        "busy_ms_per_step": union_length(intervals) / 1e3 / steps,
        "span_ms_per_step": (max(e for _, e in intervals) - min(s for s, _ in intervals))
        / 1e3
        / steps,
        "mean_op_us": total / len(ops),
        "top": [
            {
                "name": name[:90],
                "ms_per_step": t / 1e3 / steps,
                "share": t / total,
                "calls_per_step": calls[name] / steps,
                "hlo_op": hlo_op[name],
            }
            for name, t in by_name.most_common(top)
        ],
    }


def traces(directory: str | Path) -> list[Path]:
    directory = Path(directory)
    found = sorted(directory.glob("jax_*/plugins/profile/*/perfetto_trace.json.gz"))
    return (
        found + sorted(directory.glob("torch_*.json")) + sorted(directory.glob("torch_*.json.gz"))
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", help="the --profile DIR of compare_torch.py")
    parser.add_argument("--steps", type=int, default=3, help="steps each trace holds")
    args = parser.parse_args(argv)
    print(
        "| trace | device ops/step | busy ms/step | summed ms/step | span ms/step | mean op (us) |"
    )
    print("|---|---|---|---|---|---|")
    summaries = []
    for path in traces(args.directory):
        s = summarise(path, args.steps)
        summaries.append(s)
        if not s.get("device_ops_per_step"):
            print(f"| {path} | no device ops | | | | |")
            continue
        name = path.parts[len(Path(args.directory).parts)]
        cells = [f"{s['device_ops_per_step']:.0f}", f"{s['busy_ms_per_step']:.1f}",
                 f"{s['summed_ms_per_step']:.1f}", f"{s['span_ms_per_step']:.1f}",
                 f"{s['mean_op_us']:.1f}"]  # fmt: skip
        print(f"| {name} | " + " | ".join(cells) + " |")
    for s in summaries:
        if s.get("device_ops_per_step"):
            print(f"\n{s['trace']}:")
            for t in s["top"]:
                print(f"  {t['ms_per_step']:8.2f} ms/step {100 * t['share']:5.1f}%  {t['name']}")
    print(json.dumps(summaries))


if __name__ == "__main__":
    main()
