#!/usr/bin/env bash
# Every GPU measurement of benchmarks/RESULTS.md section 2 in one call, within a time budget:
#
#   benchmarks/gpu_suite.sh OUTDIR [BUDGET_SECONDS]        # from the repository root
#
# 1. jaxinterp against both PyTorch references at 64^3, batches 1 4 8 (float32 with TF32,
#    the default of both frameworks), with profiles of the batch-8 training step;
# 2. the training steps of the brain3d_64 config, and its expected training time;
# 3. the batch-8 forward pass and training step in bfloat16, in full float32 (no TF32),
#    and with the per-example CondConv;
# 4. `step_variants.py`: jaxinterp's batch-8 step and forward under each of VARIANTS, with
#    each variant's slowest kernels and their optimised HLO (kernels.txt, hlo.tar.gz), then
#    the same with XLA's convolutions forced channels-last (NHWC_VARIANTS).
# Each part runs in its own process under its own time limit, so one that fails or runs
# long costs only itself; parts the budget no longer allows are skipped and say so.
# OUTDIR receives compare.jsonl, train_step.jsonl, variants.jsonl, trace_summary.txt,
# kernels.txt, hlo.tar.gz and the traces (gzipped). SIZE, REPEATS and CONFIG override 64,
# 20 and brain3d_64; PARTS names the parts to run (default all: compare train_step bf16
# highest per_example variants nhwc). A CPU smoke test:
# SIZE=16 REPEATS=2 CONFIG=brain3d_32 benchmarks/gpu_suite.sh /tmp/suite 300
set -u
out=${1:?usage: benchmarks/gpu_suite.sh OUTDIR [BUDGET_SECONDS]}
budget=${2:-540}
size=${SIZE:-64}
repeats=${REPEATS:-20}
config=${CONFIG:-brain3d_64}
parts=" ${PARTS:-compare train_step bf16 highest per_example variants nhwc} "
variants=${VARIANTS:-experts experts+barrier per_example per_example+barrier per_example+bf16+barrier}
nhwc_variants=${NHWC_VARIANTS:-experts per_example+barrier}
py=${PYTHON:-python3}
mkdir -p "$out"
prof=$(mktemp -d)
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

part() {  # part KEY NAME LIMIT_SECONDS COMMAND...: runs if PARTS holds KEY
    local key=$1 name=$2 limit=$3 left=$((budget - SECONDS - 15))
    shift 3
    [[ $parts == *" $key "* ]] || return 0
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

part compare "compare, float32 (TF32)" 240 "${compare[@]}" --batches 1 4 8 --profile "$prof"
part train_step "train_step $config" 120 "$py" benchmarks/train_step.py --config "$config" \
    --repeats "$repeats" --out "$out/train_step.jsonl"
part bf16 "compare, bfloat16" 100 "${compare[@]}" --batches 8 --ops forward train_step --dtype bfloat16
part highest "compare, full float32" 100 "${compare[@]}" --batches 8 --ops forward train_step --precision highest
part per_example "compare, per-example CondConv" 100 "${compare[@]}" --batches 8 \
    --ops forward train_step --condconv per_example
# shellcheck disable=SC2086 # the variant lists split on spaces
step_variants=("$py" benchmarks/step_variants.py --size "$size" --batch 8 --repeats "$repeats"
    --profile "$prof/variants" --out "$out/variants.jsonl")
XLA_FLAGS="--xla_dump_to=$prof/hlo --xla_dump_hlo_as_text --xla_dump_hlo_module_re=train_step" \
    part variants "step variants: $variants" 300 "${step_variants[@]}" --variants $variants \
    --hlo "$prof/hlo"
# shellcheck disable=SC2086
XLA_FLAGS=--xla_gpu_force_conv_nhwc=true part nhwc "step variants, NHWC convolutions" 150 \
    "${step_variants[@]}" --variants $nhwc_variants
[ -f "$prof/variants/kernels.txt" ] && cp "$prof/variants/kernels.txt" "$out/kernels.txt"
find "$prof/hlo" -name '*after_optimizations.txt' 2>/dev/null |
    tar -czf "$out/hlo.tar.gz" -T - --transform 's,.*/,,' 2>/dev/null

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
