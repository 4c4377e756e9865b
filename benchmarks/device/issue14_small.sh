export PYTHONUNBUFFERED=1 TQDM_DISABLE=1 PYTHONPATH=src; W=/tmp/bt; O=/tmp/o; mkdir -p $O/trust $O/removal
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > $O/card.txt
t0=$(date +%s)
(CUDA_VISIBLE_DEVICES=0 timeout 280 python3 -m pytest -m gpu tests/ -p no:cacheprovider -q -rs > $O/gpu_tests.log 2>&1; echo "rc=$? t=$(( $(date +%s)-t0 ))" >> $O/gpu_tests.log) &
T=$!
CUDA_VISIBLE_DEVICES=1 timeout 260 python3 -c "import sys,argparse;sys.path.insert(0,'benchmarks');from trust_common import setup;S=setup(argparse.Namespace(work='$W',preset='small',device='cuda',max_length=80,threads=0),('filtered','base'));print('pretrain_s',S.pretrain_s)" > $O/setup.log 2>&1
echo "setup done t=$(( $(date +%s)-t0 ))" >> $O/setup.log
(CUDA_VISIBLE_DEVICES=1 OUT=$O/trust timeout $(( 540-($(date +%s)-t0) )) python3 benchmarks/bench_trust.py --preset small --device cuda --steps 48 --max-length 80 --reference --bf16 --budget-s 260 --work $W --runs filtered:adamw1e-4-wu8,filtered:adamw1e-3,filtered:sgd3e-2,base:adamw1e-4-wu8,filtered:sgd0.3 > $O/trust/stdout.log 2>&1; echo "rc=$? t=$(( $(date +%s)-t0 ))" >> $O/trust/stdout.log) &
wait $T
CUDA_VISIBLE_DEVICES=0 OUT=$O/removal timeout $(( 545-($(date +%s)-t0) )) python3 benchmarks/bench_removal.py --preset small --device cuda --steps 48 --max-length 80 --work $W --others "" --units doc --alphas 0.1,0.3,0.5 --subsets 16 --fractions 0.02,0.05,0.1,0.2 --ensemble 2 --heldout-seed -1 > $O/removal/stdout.log 2>&1; echo "rc=$? t=$(( $(date +%s)-t0 ))" >> $O/removal/stdout.log
wait
tar czf $OUT/call1.tgz -C $O .
tail -5 $O/gpu_tests.log $O/setup.log $O/trust/stdout.log $O/removal/stdout.log
