"""The profile summariser on hand-made traces in both formats (JAX Perfetto, PyTorch)."""

import gzip
import json

import pytest

from benchmarks.trace_summary import summarise, union_length


def test_union_length_counts_overlaps_once():
    assert union_length([(0, 10), (5, 15), (20, 30), (21, 22)]) == 25
    assert union_length([]) == 0


def test_jax_trace_counts_only_gpu_stream_events(tmp_path):
    meta = [
        {"ph": "M", "pid": 1, "name": "process_name", "args": {"name": "/host:CPU"}},
        {"ph": "M", "pid": 2, "name": "process_name", "args": {"name": "/device:GPU:0"}},
        {"ph": "M", "pid": 2, "tid": 7, "name": "thread_name", "args": {"name": "Stream #7"}},
        {"ph": "M", "pid": 2, "tid": 8, "name": "thread_name", "args": {"name": "XLA Ops"}},
    ]
    kernels = [  # two steps: conv 0-40 and 100-140, fusion 30-50 and 130-150 (overlaps)
        {
            "ph": "X",
            "pid": 2,
            "tid": 7,
            "name": "conv",
            "ts": 0,
            "dur": 40,
            "args": {"hlo_op": "cudnn-conv.3"},
        },
        {"ph": "X", "pid": 2, "tid": 7, "name": "fusion", "ts": 30, "dur": 20},
        {"ph": "X", "pid": 2, "tid": 7, "name": "conv", "ts": 100, "dur": 40},
        {"ph": "X", "pid": 2, "tid": 7, "name": "fusion", "ts": 130, "dur": 20},
    ]
    derived = [{"ph": "X", "pid": 2, "tid": 8, "name": "conv", "ts": 0, "dur": 40}]
    host = [{"ph": "X", "pid": 1, "tid": 3, "name": "python", "ts": 0, "dur": 500}]
    path = tmp_path / "perfetto_trace.json.gz"
    with gzip.open(path, "wt") as f:
        json.dump({"traceEvents": meta + kernels + derived + host}, f)
    s = summarise(path, steps=2)
    assert s["device_ops_per_step"] == 2
    assert s["summed_ms_per_step"] == pytest.approx(60 / 1e3)
    assert s["busy_ms_per_step"] == pytest.approx(50 / 1e3)
    assert s["span_ms_per_step"] == pytest.approx(75 / 1e3)
    assert [t["name"] for t in s["top"]] == ["conv", "fusion"]
    assert s["top"][0]["share"] == pytest.approx(80 / 120)
    assert [t["calls_per_step"] for t in s["top"]] == [1, 1]
    assert [t["hlo_op"] for t in s["top"]] == ["cudnn-conv.3", ""]


def test_torch_trace_counts_kernels_and_copies(tmp_path):
    events = [
        {"ph": "X", "cat": "cpu_op", "name": "aten::conv3d", "ts": 0, "dur": 100},
        {"ph": "X", "cat": "kernel", "name": "implicit_gemm", "ts": 10, "dur": 30},
        {"ph": "X", "cat": "gpu_memcpy", "name": "Memcpy DtoD", "ts": 50, "dur": 10},
    ]
    path = tmp_path / "torch_loop.json"
    path.write_text(json.dumps({"traceEvents": events}))
    s = summarise(path)
    assert s["device_ops_per_step"] == 2
    assert s["busy_ms_per_step"] == pytest.approx(40 / 1e3)
    assert s["span_ms_per_step"] == pytest.approx(50 / 1e3)


def test_trace_without_device_work(tmp_path):
    path = tmp_path / "cpu.json"
    path.write_text(json.dumps({"traceEvents": [{"ph": "X", "cat": "cpu_op", "name": "a",
                                                  "ts": 0, "dur": 1}]}))  # fmt: skip
    assert summarise(path)["device_ops"] == 0
