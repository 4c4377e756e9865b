#!/usr/bin/env bash
# Issue 14: the precision check's later steps recomputed from the float64 trajectory's states
# (prefix.py), on the small world's AdamW 1e-3 trajectory without warmup (fp32 45% off float64
# in size; the samples from the run's own states read 1e-5) and on the smooth AdamW 1e-4 warmup-8
# trajectory (float64-level agreement: it should stay `reliable`). One call, ~5 min.
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1 PYTHONPATH=$PWD/src; O=$OUT/trust
mkdir -p $O
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > $O/card.txt
OUT=$O timeout 400 python3 benchmarks/bench_trust.py --preset small --device cuda \
  --steps 48 --max-length 80 --budget-s 350 --work /tmp/bt \
  --runs filtered:adamw1e-3,filtered:adamw1e-4-wu8 > $O/stdout.log 2>&1
echo "rc=$?" >> $O/stdout.log
grep -v "it/s" $O/stdout.log | tail -12
python3 -c "
import json; d = json.load(open('$O/trust.json'))
for r in d['runs']:
    p = r['report']['checks']['precision']; s = p.get('samples', {})
    print(r['traj'], p['status'], p['per_step_error'], s.get('steps'))
    for q, v in s.get('queries', {}).items(): print('  ', q, v['step_rel_err'], v.get('trajectory_rel_err'))
"
