#!/usr/bin/env bash
# Issue 13 on one H200, one device call (~9 min): the small-world study of the weighting methods
# on scores the trust report vouches for. The study preset's attribution trajectory (AdamW 5e-4,
# constant, eps 1e-8) reads `unreliable` on every seed, and eps 1e-6 alone does not change that
# (issue13_eps_small.sh). Issue 14 measured AdamW 1e-4 with warmup 8 and eps 1e-6 `reliable` on
# the filtered start; this runs the study's attribution with that trajectory: MAGIC-weighted RR
# and MAGIC-weighted SAM-NPO with their unguided and random-score twins, 3 world seeds.
# Resumable: a second identical call (machine still warm) continues it.
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1 PYTHONPATH=$PWD/src; O=/tmp/o13s
mkdir -p $O
SEED=0,1,2 METHODS=magic_rr,weighted_sam TWINS=unguided,random WORKERS=${WORKERS:-6} \
  BUDGET_S=${STUDY_S:-530} DIR=runs/study_smooth_small OUT=$O/study \
  SET="attribution.trajectory.eps=1.0e-6 attribution.trajectory.lr=1.0e-4 attribution.trajectory.warmup_steps=8" \
  bash benchmarks/study_small_gpu.sh > $O/study.log 2>&1
tar czf $OUT/issue13_smooth_small.tgz -C $O .
grep -E "trust|verdict" $O/study.log | grep -v "it/s" | tail -8; tail -6 $O/study.log
