#!/usr/bin/env bash
# The GPU check. On a machine with a CUDA GPU and this repo's .venv (bash scripts/setup_env.sh --test), from any
# folder:
#   bash bench/gpu.sh                 # under 8 minutes on an H100 / H200
# It prints the GPU and the torch version, then runs, each step under `timeout` and logged to its own file:
#   1. the test suite on the GPU (TEST_DEVICE=cuda, -k "not slow", stops at its first failure);
#   2. the four scripts for 2 epochs on the bundled demo data (64 px, --nce_k 1024, --batch_size 64): train_CMC.py,
#      train_moco_ins.py (InsDis and MoCo), then LinearProbing.py / eval_moco_ins.py on those checkpoints, each in
#      float32 and with --amp (bfloat16 where the GPU computes it natively), and CMC and MoCo once more with float16
#      forced (CMC_AMP_DTYPE=float16: autocast float16 with its GradScaler), and MoCo with --shuffle_bn_splits 4
#      (split BatchNorm in the key encoder);
#   3. SIGTERM and resume: train_CMC.py for 5 epochs, SIGTERM once it has written current.pth; it must exit with
#      143 and print "Resume with:", and the same command with --resume auto must finish the run;
#   4. the benchmarks: bench/bench_step.py, bench/bench_colour.py, bench/bench_sampler.py (--device cuda where the
#      script takes it) and bench/loader.py if there is one.
# It ends with one summary: PASS/FAIL, seconds and the key figures per check (and the benchmarks' tables), and exits
# with 1 if any check failed, 2 if it cannot start (no GPU, no .venv).
# Settings (environment): WORK (folder for logs and runs; default a new temporary folder, kept and printed),
# TESTS (what pytest runs; default tests), PY (default .venv/bin/python), CHECK_DEVICE=cpu (the same steps on the
# CPU, much slower: only to try this script itself).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2

PY=${PY:-.venv/bin/python}
DEVICE=${CHECK_DEVICE:-cuda}
TESTS=${TESTS:-tests}
if [ ! -x "$PY" ]; then
  echo "error: bench/gpu.sh needs $PY (make it with: bash scripts/setup_env.sh --test)" >&2; exit 2
fi
if [ "$DEVICE" = cuda ] && ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null
then
  echo "error: bench/gpu.sh needs a CUDA GPU (torch.cuda.is_available() is False)" >&2; exit 2
fi
WORK=${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/cmc_gpu_check.XXXXXX")}
mkdir -p "$WORK/logs" "$WORK/runs" || exit 2

# ----------------------------------------------------------------------------------------------- what ran, how
NAMES=() RESULTS=() SECS=() NOTES=() FIGURE_LOGS=()
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
record() {                       # name PASS|FAIL seconds note
  NAMES+=("$1"); RESULTS+=("$2"); SECS+=("$3"); NOTES+=("$4")
  printf '   %s %s (%s s) %s\n' "$2" "$1" "$3" "$4"
}
fail_tail() { tail -n 15 "$1" | sed 's/^/      | /'; }

# The numbers worth a glance in a log: a training run's last epoch time and loss, a probe's best accuracy, pytest's
# tally.
figures() {
  local log=$1 out=() line
  line=$(grep -o 'epoch [0-9]*, total time [0-9.]*' "$log" | tail -n 1) \
    && out+=("$(sed -E 's/epoch ([0-9]+), total time ([0-9.]+)/epoch \1 took \2 s/' <<<"$line")")
  line=$(grep -o $'\tloss [-0-9.naif]* ([-0-9.naif]*)' "$log" | tail -n 1 | tr -d '\t') && out+=("$line")
  line=$(grep -o 'best Acc@1 [0-9.]*' "$log" | tail -n 1) && out+=("$line")
  line=$(grep -E '[0-9]+ (passed|failed)' "$log" | tail -n 1) && out+=("$line")
  local joined; printf -v joined '%s; ' "${out[@]}"; echo "${joined%; }"
}

# run_check NAME LIMIT_S COMMAND...: run it under timeout, log to $WORK/logs/NAME.log, record PASS/FAIL.
run_check() {
  local name=$1 limit=$2; shift 2
  local log="$WORK/logs/$name.log" t0 rc secs
  echo "== $name: $*"
  t0=$(now)
  timeout --kill-after 15 "$limit" "$@" >"$log" 2>&1; rc=$?
  secs=$(since "$t0")
  if [ $rc -eq 0 ]; then
    record "$name" PASS "$secs" "$(figures "$log")"
  else
    local why="exit $rc"
    [ $rc -eq 124 ] || [ $rc -eq 137 ] && why="timed out after ${limit} s"
    record "$name" FAIL "$secs" "$why; log: $log"
    fail_tail "$log"
  fi
  return $rc
}

# -------------------------------------------------------------------------------------------------- the machine
echo "== machine (logs and runs in $WORK)"
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
else
  echo "nvidia-smi: not found"
fi
MACHINE=$("$PY" - "$DEVICE" <<'EOF'
import sys, torch
line = f'torch {torch.__version__}'
if sys.argv[1] == 'cuda':
    cap = torch.cuda.get_device_capability()
    line += (f', CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, '
             f'{torch.cuda.get_device_name()} (sm_{cap[0]}{cap[1]}, {torch.cuda.device_count()} visible), '
             f'bf16 {torch.cuda.is_bf16_supported()}')
else:
    line += ', CPU only (CHECK_DEVICE=cpu)'
print(line)
EOF
)
echo "$MACHINE"

# ---------------------------------------------------------------------------------------------------- 1. tests
run_check tests 270 \
  env TEST_DEVICE="$DEVICE" "$PY" -m pytest -q "$TESTS" -x -k "not slow" -p no:cacheprovider

# --------------------------------------------------------------------------------------- 2. the four scripts
COMMON=(--dataset demo --image_size 64 --batch_size 64 --num_workers 4 --device "$DEVICE" --seed 0 --print_freq 10)
pretrain() {            # name script [flags...]: 2 epochs, its own model and TensorBoard folders
  local name=$1 script=$2; shift 2
  run_check "$name" 150 "$PY" "$script" "${COMMON[@]}" --epochs 2 --nce_k 1024 \
    --model_path "$WORK/runs/$name/models" --tb_path "$WORK/runs/$name/tb" "$@"
}
checkpoint_of() {       # the current.pth a pretraining check wrote (empty if none)
  compgen -G "$WORK/runs/$1/models/*/current.pth" | head -n 1
}
probe() {               # name script pretrain_name [flags...]
  local name=$1 script=$2 from=$3 ckpt; shift 3
  ckpt=$(checkpoint_of "$from")
  if [ -z "$ckpt" ]; then
    record "$name" FAIL 0 "no checkpoint to probe: $from wrote no current.pth"; return
  fi
  run_check "$name" 150 "$PY" "$script" "${COMMON[@]}" --epochs 2 --learning_rate 0.1 --layer 6 --bn \
    --model_path "$ckpt" --save_path "$WORK/runs/$name/save" --tb_path "$WORK/runs/$name/tb" "$@"
}
pretrain cmc_fp32       train_CMC.py      --model resnet18v1
pretrain cmc_amp        train_CMC.py      --model resnet18v1 --amp
CMC_AMP_DTYPE=float16 pretrain cmc_amp_fp16 train_CMC.py --model resnet18v1 --amp
pretrain insdis_fp32    train_moco_ins.py --model resnet18 --softmax
pretrain insdis_amp     train_moco_ins.py --model resnet18 --softmax --amp
pretrain moco_fp32      train_moco_ins.py --model resnet18 --softmax --moco
pretrain moco_amp       train_moco_ins.py --model resnet18 --softmax --moco --amp
CMC_AMP_DTYPE=float16 pretrain moco_amp_fp16 train_moco_ins.py --model resnet18 --softmax --moco --amp
pretrain moco_split_bn  train_moco_ins.py --model resnet18 --softmax --moco --shuffle_bn_splits 4
probe probe_cmc_fp32    LinearProbing.py  cmc_fp32  --model resnet18v1
probe probe_cmc_amp     LinearProbing.py  cmc_amp   --model resnet18v1 --amp
probe probe_moco_fp32   eval_moco_ins.py  moco_fp32 --model resnet18
probe probe_moco_amp    eval_moco_ins.py  moco_amp  --model resnet18 --amp

# ------------------------------------------------------------------------------------ 3. SIGTERM, then resume
resume_check() {
  local dir="$WORK/runs/resume" stop_log="$WORK/logs/resume_stop.log" t0 pid rc ckpt="" deadline waited=0 stop_s
  local args=(train_CMC.py "${COMMON[@]}" --model resnet18v1 --nce_k 1024 --epochs 5
              --model_path "$dir/models" --tb_path "$dir/tb")
  echo "== resume: $PY ${args[*]}, SIGTERM after the first current.pth, then --resume auto"
  t0=$(now)
  "$PY" "${args[@]}" >"$stop_log" 2>&1 &
  pid=$!
  deadline=$((SECONDS + 150))
  while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do      # poll: the file appears by a rename
    ckpt=$(compgen -G "$dir/models/*/current.pth" | head -n 1) && break
    sleep 0.2
  done
  if [ -z "$ckpt" ]; then
    kill -KILL "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
    record resume_sigterm FAIL "$(since "$t0")" "no current.pth within 150 s (or the run ended first); log: $stop_log"
    fail_tail "$stop_log"; return
  fi
  local t_term; t_term=$(now)
  kill -TERM "$pid"
  # It must stop within torchrun's 30 s grace (SIGTERM, then SIGKILL): finish the step, save, exit.
  while kill -0 "$pid" 2>/dev/null && [ $waited -lt 300 ]; do sleep 0.1; waited=$((waited + 1)); done
  if kill -0 "$pid" 2>/dev/null; then
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    record resume_sigterm FAIL "$(since "$t0")" "still running 30 s after SIGTERM; log: $stop_log"
    fail_tail "$stop_log"; return
  fi
  wait "$pid"; rc=$?
  stop_s=$(since "$t_term")
  if [ $rc -ne 143 ] || ! grep -q 'Resume with:' "$stop_log"; then
    local why="exit $rc, expected 143 with a 'Resume with:' line"
    [ $rc -eq 0 ] && why="the run finished before SIGTERM arrived (exit 0)"
    record resume_sigterm FAIL "$(since "$t0")" "$why; log: $stop_log"
    fail_tail "$stop_log"; return
  fi
  record resume_sigterm PASS "$(since "$t0")" "exit 143 ${stop_s} s after SIGTERM; $(grep -o 'stopped by [^;]*' \
    "$stop_log" | head -n 1)"
  if run_check resume_continue 240 "$PY" "${args[@]}" --resume auto; then
    if ! grep -q 'resumed from' "$WORK/logs/resume_continue.log" \
        || ! grep -q 'epoch 5, total time' "$WORK/logs/resume_continue.log"; then
      RESULTS[${#RESULTS[@]}-1]=FAIL
      NOTES[${#NOTES[@]}-1]="exit 0 but no 'resumed from' or no epoch 5 in $WORK/logs/resume_continue.log"
      echo "   FAIL resume_continue: ${NOTES[${#NOTES[@]}-1]}"
    fi
  fi
}
resume_check

# ------------------------------------------------------------------------------------------------ 4. benchmarks
bench() {               # name script [flags...]: adds --device when the script takes it
  local name=$1 script=$2; shift 2
  local flags=("$@")
  if "$PY" "$script" --help 2>/dev/null | grep -q -- '--device'; then flags+=(--device "$DEVICE"); fi
  if run_check "$name" 180 "$PY" "$script" "${flags[@]}"; then FIGURE_LOGS+=("$name"); fi
}
bench bench_step    bench/bench_step.py
bench bench_colour  bench/bench_colour.py
# the pure-Python reference build runs on the CPU (tens of seconds; its figure is in the README): left out here
bench bench_sampler bench/bench_sampler.py --skip-reference
if [ -f bench/loader.py ]; then bench bench_loader bench/loader.py; fi

# ------------------------------------------------------------------------------------------------------ summary
echo
echo "================================================================ summary"
echo "$MACHINE"
failed=0
printf '%-16s %-4s %7s  %s\n' check ok seconds 'figures / why'
for i in "${!NAMES[@]}"; do
  printf '%-16s %-4s %7s  %s\n' "${NAMES[$i]}" "${RESULTS[$i]}" "${SECS[$i]}" "${NOTES[$i]}"
  [ "${RESULTS[$i]}" = PASS ] || failed=$((failed + 1))
done
for name in "${FIGURE_LOGS[@]}"; do
  echo "---- $name"
  grep -v -e '^\s*$' -e 'Warning' "$WORK/logs/$name.log" | tail -n 20
done
echo "logs and runs: $WORK"
if [ $failed -gt 0 ]; then
  echo "FAIL: $failed of ${#NAMES[@]} checks failed"; exit 1
fi
echo "PASS: all ${#NAMES[@]} checks passed"
exit 0
