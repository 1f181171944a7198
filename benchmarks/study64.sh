#!/usr/bin/env bash
# The 3D study at 64^3 in one accelerator call (RESULTS.md section 3 at brain3d_64's size):
#
#   benchmarks/study64.sh OUTDIR BUDGET_SECONDS VARIANT...      # from the repository root
#
# 1. brain3d_64's cohort (200 controls, 200 patients, 64^3, seed 0) written by `jaxinterp
#    synth3d` as NIfTI files with cohort.csv: the very images the config trains on;
# 2. brain3d_64's classifier (`jaxinterp train-classifier`), unless CLASSIFIER names a
#    workdir that holds one (e.g. the classifier.tar of an earlier call, unpacked);
# 3. `benchmarks/study3d.sh` with CONFIG=brain3d_64: each VARIANT (NAME:STEPS[:SETS...], as
#    there) trained side by side against that classifier, then explained on the cohort.
# OUTDIR receives the cohort's log, classifier.tar (its checkpoint, summary and metrics) and
# study3d.sh's results.tar.gz and checkpoints. E.g., brain3d_64 as it is against brain3d_32's
# settings (a volume output with a full-resolution head, the volume term, the tied population
# map, total variation of the growth, delta 22.5):
#
#   benchmarks/study64.sh /tmp/s64 520 v64:3000 \
#       "vol64:3000:simulator.output='volume';simulator.head_layers=1;objective.volume_weight=200.0;objective.lambda_phi=0.1;simulator.population_map='tied';objective.growth_smoothness=10.0;objective.growth_smoothness_norm='l1';objective.delta=22.5"
#
# SIZE, N and CONFIG override 64, 200 and brain3d_64 for the cohort written (a CPU smoke test
# with a trained brain3d_32 classifier, 2 minutes on 2 cores: SIZE=32 N=4
# CONFIG=brain3d_32 CLASSIFIER=runs/b32_base EXPLAIN_RESERVE=400 benchmarks/study64.sh
# /tmp/s64 700 a:2).
set -u
out=${1:?usage: benchmarks/study64.sh OUTDIR BUDGET_SECONDS VARIANT...}
budget=${2:?budget in seconds}
shift 2
size=${SIZE:-64}
n=${N:-200}
export CONFIG=${CONFIG:-brain3d_64}
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$out"
cohort=$out/cohort
classifier=${CLASSIFIER:-$out/base}

echo "## cohort: start"
"$py" -m train.cli synth3d --out "$cohort" --n-controls "$n" --n-patients "$n" --size "$size" \
    --seed 0 >"$out/cohort.log" 2>&1 || { echo "## cohort failed"; tail -5 "$out/cohort.log"; exit 1; }
echo "## cohort: done at ${SECONDS}s"

if [ ! -d "$classifier/classifier" ]; then
    "$py" -m train.cli train-classifier --config "$CONFIG" --workdir "$classifier" \
        >"$out/classifier.log" 2>&1 ||
        { echo "## classifier failed"; tail -5 "$out/classifier.log"; exit 1; }
    tar -cf "$out/classifier.tar" -C "$classifier" classifier
fi
echo "## classifier: done at ${SECONDS}s"
grep -h '"accuracy"' "$classifier/classifier/summary.json" 2>/dev/null | head -3

benchmarks/study3d.sh "$classifier" "$cohort" "$out/study" $((budget - SECONDS)) "$@"
