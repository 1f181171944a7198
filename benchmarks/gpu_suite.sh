#!/usr/bin/env bash
# Every GPU measurement of benchmarks/RESULTS.md section 2 in one call, within a time budget:
#
#   benchmarks/gpu_suite.sh OUTDIR [BUDGET_SECONDS]        # from the repository root
#
# 1. jaxinterp against both PyTorch references at 64^3, batches 1 4 8 (float32 with TF32,
#    the default of both frameworks), with profiles of the batch-8 training step;
# 2. the training steps of the brain3d_64 config, and its expected training time;
# 3. the batch-8 forward pass and training step in bfloat16, in full float32 (no TF32),
#    and with the per-example CondConv.
# Each part runs in its own process under its own time limit, so one that fails or runs
# long costs only itself; parts the budget no longer allows are skipped and say so.
# OUTDIR receives compare.jsonl, train_step.jsonl, trace_summary.txt and the traces
# (gzipped). SIZE, REPEATS and CONFIG override 64, 20 and brain3d_64 (a CPU smoke test:
# SIZE=16 REPEATS=2 CONFIG=brain3d_32 benchmarks/gpu_suite.sh /tmp/suite 300).
set -u
out=${1:?usage: benchmarks/gpu_suite.sh OUTDIR [BUDGET_SECONDS]}
budget=${2:-540}
size=${SIZE:-64}
repeats=${REPEATS:-20}
config=${CONFIG:-brain3d_64}
py=${PYTHON:-python3}
mkdir -p "$out"
prof=$(mktemp -d)
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

part() {  # part NAME LIMIT_SECONDS COMMAND...
    local name=$1 limit=$2 left=$((budget - SECONDS - 15))
    shift 2
    if ((left < 30)); then
        echo "## $name: skipped, ${left}s of the budget left"
        return
    fi
    ((limit > left)) && limit=$left
    echo "## $name: start at ${SECONDS}s, limit ${limit}s"
    timeout -k 10 "$limit" "$@"
    echo "## $name: exit $? at ${SECONDS}s"
}

compare=("$py" benchmarks/compare_torch.py --sizes "$size" --repeats "$repeats" --out "$out/compare.jsonl")

echo "## machine"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1
"$py" -c "import sys, jax, flax, optax, torch; print(sys.version.split()[0], 'jax', jax.__version__, \
jax.devices(), 'flax', flax.__version__, 'optax', optax.__version__, 'torch', torch.__version__)"

part "compare, float32 (TF32)" 240 "${compare[@]}" --batches 1 4 8 --profile "$prof"
part "train_step $config" 120 "$py" benchmarks/train_step.py --config "$config" \
    --repeats "$repeats" --out "$out/train_step.jsonl"
part "compare, bfloat16" 100 "${compare[@]}" --batches 8 --ops forward train_step --dtype bfloat16
part "compare, full float32" 100 "${compare[@]}" --batches 8 --ops forward train_step --precision highest
part "compare, per-example CondConv" 100 "${compare[@]}" --batches 8 --ops forward train_step \
    --condconv per_example

"$py" benchmarks/trace_summary.py "$prof" >"$out/trace_summary.txt" 2>&1
cat "$out/trace_summary.txt"
for trace in "$prof"/jax_*/plugins/profile/*/perfetto_trace.json.gz; do
    [ -f "$trace" ] && cp "$trace" "$out/jax_trace.json.gz"
done
for trace in "$prof"/torch_*.json; do
    [ -f "$trace" ] && gzip -c "$trace" >"$out/$(basename "$trace").gz"
done
ls -la "$out"
echo "## done at ${SECONDS}s"
