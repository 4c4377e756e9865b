#!/usr/bin/env bash
# GPU small-world study (issue 13), one seed per device call. On the device:
#   SEED=0 [METHODS=name,...] [TWINS=unguided,random] [WORKERS=4] [BUDGET_S=510] [SET="key=value ..."] \
#     OUT=/some/dir \
#     bash benchmarks/study_small_gpu.sh
# (PRESET=micro DEVICE=cpu DIR=/tmp/x [PYTHON=...] checks the same logic on a CPU.)
# Runs or resumes seed $SEED of `magic-unlearn study --preset small --device cuda` in
# runs/study_small (git-ignored: it survives between calls while the machine stays warm, so a
# call that stops early is resumed by the next one), stops itself after BUDGET_S seconds so the
# call ends inside its 9-minute slot, and packs what merges (seed records, leaderboard, report;
# kilobytes, no models) into $OUT/study_seed$SEED.tgz. Merge here: docs/results.md.
set -uo pipefail
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
OUT=${OUT:-/tmp/out}; DIR=${DIR:-runs/study_small}; SEED=${SEED:?set SEED}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null | tee "$OUT/card.txt"
args=(study --preset "${PRESET:-small}" --device "${DEVICE:-cuda}" --seeds "$SEED" --out "$DIR"
      --workers "${WORKERS:-4}")
[ -n "${METHODS:-}" ] && args+=(--methods "$METHODS")
[ -n "${TWINS:-}" ] && args+=(--twins "$TWINS")
# config overrides, space-separated, e.g. SET="attribution.trajectory.eps=1.0e-6 attribution.trajectory.lr=1.0e-4"
for kv in ${SET:-}; do args+=(--set "$kv"); done
t0=$(date +%s)
# SIGINT first (the study marks its unfinished runs and exits; a rerun resumes them), KILL later
timeout --signal=INT --kill-after=20 "${BUDGET_S:-510}" \
  "${PYTHON:-python3}" -c "from magic_unlearn.cli import main; main()" "${args[@]}" 2>&1 | tee "$OUT/study_seed$SEED.log"
rc=${PIPESTATUS[0]}
echo "seed $SEED: exit $rc after $(( $(date +%s) - t0 )) s (124/130: stopped at the budget; rerun to resume)"
ls "$DIR/seeds" 2>/dev/null
tar czf "$OUT/study_seed$SEED.tgz" -C "$DIR" seeds leaderboard.json report.md report.html study_assets 2>/dev/null
exit 0
