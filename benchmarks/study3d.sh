#!/usr/bin/env bash
# Several simulator settings trained side by side on one accelerator against one trained
# classifier, each explained on a synthetic cohort (the 3D study of RESULTS.md section 3):
#
#   benchmarks/study3d.sh CLASSIFIER_WORKDIR COHORT OUTDIR BUDGET_SECONDS VARIANT...
#
# CLASSIFIER_WORKDIR holds classifier/ (from `jaxinterp train-classifier --config CONFIG`),
# COHORT a `jaxinterp synth3d` output (its cohort.csv is the scan table). A VARIANT is
# NAME:STEPS[:SETS[:EXPLAIN_OPTIONS[:CLASSIFIER_WORKDIR]]]:
#   SETS             config overrides KEY=VALUE;KEY=VALUE..., e.g. simulator.head_layers=1
#   EXPLAIN_OPTIONS  default `--methods none`; `--occlusion` adds every saliency baseline
#   CLASSIFIER_WORKDIR  another classifier for this variant, e.g. an untrained one for the
#                    randomisation check (benchmarks/randomisation3d.py)
# e.g. `h0:900::--occlusion h1:900:simulator.head_layers=1`. Every variant trains in its own
# process (`jaxinterp train-simulator`, a copy of the classifier in OUTDIR/runs/NAME), then
# runs `jaxinterp explain` on the latest checkpoint it reached: training stops early where
# the budget would leave less than EXPLAIN_RESERVE seconds (default 150) for the
# explanation. OUTDIR receives results.tar.gz (each variant's evaluation.json, scans.csv,
# explain.json, group maps, metrics and logs) and ckpt_NAME.tar (each variant's latest
# simulator checkpoint); OUTDIR/runs keeps everything.
# CONFIG (default brain3d_32) and PYTHON (default python3) can be set. A CPU smoke test,
# with a copy of the cohort whose cohort.csv keeps a few rows of each group (about 20
# minutes on 2 cores, most of it the explanations):
#   EXPLAIN_RESERVE=600 benchmarks/study3d.sh runs/b32 runs/cohort_small /tmp/s 1400 \
#       a:2 b:2:simulator.head_layers=1
set -u
src=${1:?usage: benchmarks/study3d.sh CLASSIFIER_WORKDIR COHORT OUTDIR BUDGET_SECONDS VARIANT...}
cohort=${2:?cohort folder}
out=${3:?output folder}
budget=${4:?budget in seconds}
shift 4
reserve=${EXPLAIN_RESERVE:-150}
config=${CONFIG:-brain3d_32}
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export XLA_PYTHON_CLIENT_PREALLOCATE=false # the variants share the accelerator's memory
mkdir -p "$out/runs"

echo "## machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || lscpu | grep 'Model name'
"$py" -c "import sys, jax, flax, optax, orbax.checkpoint as ocp, nibabel; print(sys.version.split()[0], \
'jax', jax.__version__, jax.devices(), 'flax', flax.__version__, 'optax', optax.__version__, \
'orbax', ocp.__version__, 'nibabel', nibabel.__version__)"

variant() { # variant NAME STEPS SETS EXPLAIN_OPTIONS CLASSIFIER_WORKDIR
    local name=$1 steps=$2 sets=$3 options=$4 classifier=$5 workdir=$out/runs/$1 start=$SECONDS
    local args=(--config "$config" --workdir "$workdir" --set "simulator_optim.steps=$steps")
    local item
    IFS=';' read -ra items <<<"$sets"
    for item in "${items[@]}"; do
        [ -n "$item" ] && args+=(--set "$item")
    done
    mkdir -p "$workdir"
    cp -r "$classifier/classifier" "$workdir/"
    timeout -k 10 $((budget - reserve - SECONDS)) "$py" -m train.cli train-simulator "${args[@]}" \
        >"$workdir/train.log" 2>&1
    local code=$?
    local last
    # finished checkpoints only: orbax writes STEP.orbax-checkpoint-tmp, then renames it
    last=$(ls "$workdir/simulator/checkpoints" 2>/dev/null | grep -E '^[0-9]+$' | sort -n | tail -1)
    echo "## $name: training exit $code after $((SECONDS - start)) s, latest checkpoint ${last:-none}"
    [ -z "$last" ] && return
    timeout -k 10 $((budget - 25 - SECONDS)) "$py" -m train.cli explain "${args[@]}" \
        --table "$cohort/cohort.csv" --out "$workdir/explain" $options >"$workdir/explain.log" 2>&1
    echo "## $name: explain exit $? at ${SECONDS}s"
    tar -cf "$out/ckpt_$name.tar" -C "$workdir/simulator/checkpoints" "$last"
}

for spec in "$@"; do
    IFS=: read -r name steps sets options classifier <<<"$spec"
    variant "$name" "$steps" "${sets:-}" "${options:---methods none}" "${classifier:-$src}" &
done
wait
(
    cd "$out/runs" &&
        tar -czf ../results.tar.gz --exclude=classifier --exclude=checkpoints --exclude=scans --exclude='.explain.*' \
            ./*
)
for spec in "$@"; do
    name=${spec%%:*}
    grep -E '"step"' "$out/runs/$name/simulator/metrics.jsonl" 2>/dev/null | tail -1 | cut -c1-300
done
ls -la "$out"
echo "## done at ${SECONDS}s"
