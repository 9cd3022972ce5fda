#!/usr/bin/env bash
# The GPU check. On a machine with a CUDA GPU, from any folder:
#   bash bench/gpu.sh                 # about 8 minutes on an H200 (BUDGET_S caps it)
#   STYLES=1 bash bench/gpu.sh        # then one seed of the styles finding too (step 6, at most 6 more minutes)
#   STYLES=only bash bench/gpu.sh     # the styles finding alone
# It prints the GPU and the torch version, then runs, each step under `timeout` and logged to its own file, the most
# telling first, so that a capped run loses the least:
#   1. the GPU targets (#14): bench/end_to_end.py (CMC AlexNet, 224 px, 8 loader workers, train_CMC.py end to end:
#      ours against the reference's per-image scikit-image path, --color_on_cpu) and bench/bench_step.py for
#      resnet50v1 at 224 px, batch 128 and 256 (bf16 autocast + channels-last against float32 NCHW);
#   2. the four scripts for 2 epochs on the bundled demo data (64 px, --nce_k 1024, --batch_size 64), several at
#      once (the GPU and the cores have room; these are pass/fail checks, not timings): train_CMC.py and
#      train_moco_ins.py (InsDis and MoCo) in float32 and with --amp (bfloat16 where the GPU computes it natively),
#      CMC and MoCo once more with float16 forced (CMC_AMP_DTYPE=float16: autocast float16 with its GradScaler), MoCo
#      with --shuffle_bn_splits 4 (split BatchNorm in the key encoder), CMC under torchrun --nproc_per_node 1; then
#      LinearProbing.py / eval_moco_ins.py on those checkpoints;
#   3. SIGTERM and resume: train_CMC.py for 5 epochs, SIGTERM once it has written current.pth; it must exit with
#      143 and print "Resume with:", and the same command with --resume auto must finish the run;
#   4. the tests that take a device (TEST_DEVICE=cuda: the files that use it, stops at its first failure);
#   5. the other benchmarks: bench/bench_step.py (resnet18v1, memory-bank scores), bench/bench_colour.py,
#      bench/bench_sampler.py (--device cuda where the script takes it) and bench/loader.py (per CPU core).
# It ends with one summary: PASS/FAIL/SKIP, seconds and the key figures per check (and the benchmarks' tables), and
# exits with 1 if any check failed, 2 if it cannot start (no GPU, no Python with torch). The budget is checked as each
# step starts and cuts its time limit to what is left; a step already running may end up to its own limit later.
# Settings (environment): WORK (folder for logs and runs; default a new temporary folder, kept and printed),
# PY (default .venv/bin/python if there is one, else python3), BUDGET_S (seconds: a check that would start with
# under 20 s left is skipped, and each one's limit is cut to what is left; default 900), CHECK_DEVICE=cpu (the same
# steps on the CPU, much slower: only to try this script itself), STYLES (above), STYLES_FLAGS (more flags for
# scripts/findings.py styles, e.g. "--smoke --lanes 1 --data_folder DIR" to try step 6 on the CPU).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2

if [ -z "${PY:-}" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
DEVICE=${CHECK_DEVICE:-cuda}
BUDGET_S=${BUDGET_S:-900}
DEADLINE=$((SECONDS + BUDGET_S))
if ! command -v "$PY" >/dev/null || ! "$PY" -c 'import torch' 2>/dev/null; then
  echo "error: bench/gpu.sh needs a Python with torch: $PY has none (make .venv with: bash scripts/setup_env.sh" \
       "--test, or pass PY=...)" >&2; exit 2
fi
if [ "$DEVICE" = cuda ] && ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null
then
  echo "error: bench/gpu.sh needs a CUDA GPU (torch.cuda.is_available() is False)" >&2; exit 2
fi
WORK=${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/cmc_gpu_check.XXXXXX")}
mkdir -p "$WORK/logs" "$WORK/runs" "$WORK/records" || exit 2

# ----------------------------------------------------------------------------------------------- what ran, how
# Each check writes one record file (so that checks run in the background are counted too); the summary reads them.
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
record() {                       # name PASS|FAIL|SKIP seconds note
  printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >"$WORK/records/$(date +%s%N)_$1"
  printf '   %s %s (%s s) %s\n' "$2" "$1" "$3" "$4"
}
fail_tail() { tail -n 15 "$1" | sed 's/^/      | /'; }

# The numbers worth a glance in a log: a training run's last epoch time and loss, a probe's best accuracy, pytest's
# tally, a benchmark's SUMMARY.
figures() {
  local log=$1 out=() line
  line=$(grep -o 'epoch [0-9]*, total time [0-9.]*' "$log" | tail -n 1) \
    && out+=("$(sed -E 's/epoch ([0-9]+), total time ([0-9.]+)/epoch \1 took \2 s/' <<<"$line")")
  line=$(grep -o $'\tloss [-0-9.naif]* ([-0-9.naif]*)' "$log" | tail -n 1 | tr -d '\t') && out+=("$line")
  line=$(grep -o 'best Acc@1 [0-9.]*' "$log" | tail -n 1) && out+=("$line")
  line=$(grep -E '[0-9]+ (passed|failed)' "$log" | tail -n 1) && out+=("$line")
  line=$(grep -o 'SUMMARY: .*' "$log" | tail -n 1) && out+=("$line")
  local joined; printf -v joined '%s; ' "${out[@]}"; echo "${joined%; }"
}

# run_check NAME LIMIT_S COMMAND...: run it under timeout (cut to what is left of BUDGET_S), log to
# $WORK/logs/NAME.log, record PASS/FAIL (or SKIP when the budget is spent).
run_check() {
  local name=$1 limit=$2; shift 2
  local log="$WORK/logs/$name.log" t0 rc secs left=$((DEADLINE - SECONDS))
  if [ $left -lt 20 ]; then record "$name" SKIP 0 "BUDGET_S=$BUDGET_S spent"; return 3; fi
  [ $left -lt "$limit" ] && limit=$left
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

if [ "${STYLES:-}" != only ]; then      # STYLES=only: step 6 alone
# ----------------------------------------------------------------------------------------- 1. the GPU targets
bench() {               # name script [flags...]: adds --device when the script takes it
  local name=$1 script=$2; shift 2
  local flags=("$@")
  if [ $((DEADLINE - SECONDS)) -lt 20 ]; then record "$name" SKIP 0 "BUDGET_S=$BUDGET_S spent"; return; fi
  if "$PY" "$script" --help 2>/dev/null | grep -q -- '--device'; then flags+=(--device "$DEVICE"); fi
  if run_check "$name" 240 "$PY" "$script" "${flags[@]}"; then
    echo "$name" >>"$WORK/figure_logs"
  fi
}
if [ "$DEVICE" = cuda ]; then
  bench end_to_end bench/end_to_end.py
  bench step_resnet50 bench/bench_step.py --model resnet50v1 --image_size 224 --batch 128 --skip-banks
  bench step_r50_b256 bench/bench_step.py --model resnet50v1 --image_size 224 --batch 256 --skip-banks
else                    # trying the script on the CPU: the same commands, tiny
  bench end_to_end bench/end_to_end.py --smoke
  bench step_resnet50 bench/bench_step.py --model resnet50v1 --image_size 32 --batch 4 --skip-banks
fi

# --------------------------------------------------------------------------------------- 2. the four scripts
COMMON=(--dataset demo --image_size 64 --batch_size 64 --num_workers 2 --device "$DEVICE" --seed 0 --print_freq 10)
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
  if [ -z "$ckpt" ] && compgen -G "$WORK/records/*_$from" >/dev/null \
      && grep -q $'\tSKIP\t' "$WORK"/records/*_"$from"; then
    record "$name" SKIP 0 "$from was skipped"; return
  fi
  if [ -z "$ckpt" ]; then
    record "$name" FAIL 0 "no checkpoint to probe: $from wrote no current.pth"; return
  fi
  run_check "$name" 150 "$PY" "$script" "${COMMON[@]}" --epochs 2 --learning_rate 0.1 --layer 6 --bn \
    --model_path "$ckpt" --save_path "$WORK/runs/$name/save" --tb_path "$WORK/runs/$name/tb" "$@"
}
# Five at a time: pass/fail checks, each with 2 loader workers.
pretrain cmc_fp32       train_CMC.py      --model resnet18v1 &
pretrain cmc_amp        train_CMC.py      --model resnet18v1 --amp &
CMC_AMP_DTYPE=float16 pretrain cmc_amp_fp16 train_CMC.py --model resnet18v1 --amp &
pretrain insdis_fp32    train_moco_ins.py --model resnet18 --softmax &
pretrain insdis_amp     train_moco_ins.py --model resnet18 --softmax --amp &
wait
pretrain moco_fp32      train_moco_ins.py --model resnet18 --softmax --moco &
pretrain moco_amp       train_moco_ins.py --model resnet18 --softmax --moco --amp &
CMC_AMP_DTYPE=float16 pretrain moco_amp_fp16 train_moco_ins.py --model resnet18 --softmax --moco --amp &
pretrain moco_split_bn  train_moco_ins.py --model resnet18 --softmax --moco --shuffle_bn_splits 4 &
run_check cmc_torchrun 150 "$PY" -m torch.distributed.run --nproc_per_node 1 train_CMC.py "${COMMON[@]}" \
  --model resnet18v1 --amp --epochs 2 --nce_k 1024 --model_path "$WORK/runs/cmc_torchrun/models" \
  --tb_path "$WORK/runs/cmc_torchrun/tb" &
wait
probe probe_cmc_fp32    LinearProbing.py  cmc_fp32  --model resnet18v1 &
probe probe_cmc_amp     LinearProbing.py  cmc_amp   --model resnet18v1 --amp &
probe probe_moco_fp32   eval_moco_ins.py  moco_fp32 --model resnet18 &
probe probe_moco_amp    eval_moco_ins.py  moco_amp  --model resnet18 --amp &
wait

# ------------------------------------------------------------------------------------ 3. SIGTERM, then resume
resume_check() {
  local dir="$WORK/runs/resume" stop_log="$WORK/logs/resume_stop.log" t0 pid rc ckpt="" deadline waited=0 stop_s
  local args=(train_CMC.py "${COMMON[@]}" --model resnet18v1 --nce_k 1024 --epochs 5
              --model_path "$dir/models" --tb_path "$dir/tb")
  if [ $((DEADLINE - SECONDS)) -lt 90 ]; then record resume_sigterm SKIP 0 "BUDGET_S=$BUDGET_S spent"; return; fi
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
      rm -f "$WORK"/records/*_resume_continue
      record resume_continue FAIL "$(since "$t0")" \
        "exit 0 but no 'resumed from' or no epoch 5 in $WORK/logs/resume_continue.log"
    fi
  fi
}
resume_check

# ------------------------------------------------------------------------------- 4. the tests that take a device
# The files that run models, memories or scripts on TEST_DEVICE (the rest of the suite is device-free: CI runs it).
DEVICE_TESTS=$(grep -rl 'TEST_DEVICE' tests --include='test_*.py' | tr '\n' ' ')
XDIST=()
if "$PY" -c 'import xdist' 2>/dev/null; then XDIST=(-n 4); fi
# shellcheck disable=SC2086
run_check tests 300 env TEST_DEVICE="$DEVICE" "$PY" -m pytest -q $DEVICE_TESTS -x -k "not slow" \
  -p no:cacheprovider "${XDIST[@]}"

# ------------------------------------------------------------------------------------------ 5. other benchmarks
bench bench_step    bench/bench_step.py
bench bench_colour  bench/bench_colour.py
# the pure-Python reference build runs on the CPU (tens of seconds; its figure is in the README): left out here
bench bench_sampler bench/bench_sampler.py --skip-reference
bench bench_loader  bench/loader.py --images 60 --items 240 --repeats 1 --large-size 0 0   # per CPU core, quiet cores

fi  # steps 1-5

# ------------------------------------------------------------------------- 6. the styles finding, when asked
# STYLES=1 (after the checks above) or STYLES=only (alone): one seed of the styles finding (scripts/findings_styles.sh,
# issue #25: 10 pretraining runs on data/styles32, 20 epochs each, and the evaluation of 11 encoders), 4 runs side by
# side on the GPU, capped at 6 minutes; its table is printed with the summary.
if [ -n "${STYLES:-}" ] && [ "${STYLES}" != 0 ]; then
  # shellcheck disable=SC2086
  if run_check styles_finding 360 bash scripts/findings_styles.sh --lanes 4 --work "$WORK/runs/styles" \
      --results "$WORK/styles_results" ${STYLES_FLAGS:-}; then
    cat "$WORK/styles_results/findings.md" >>"$WORK/logs/styles_finding.log"
    echo styles_finding >>"$WORK/figure_logs"
  fi
fi

# ------------------------------------------------------------------------------------------------------ summary
echo
echo "================================================================ summary"
echo "$MACHINE"
failed=0 total=0 skipped=0
printf '%-16s %-4s %7s  %s\n' check ok seconds 'figures / why'
for file in "$WORK"/records/*; do
  IFS=$'\t' read -r name result secs note <"$file"
  printf '%-16s %-4s %7s  %s\n' "$name" "$result" "$secs" "$note"
  total=$((total + 1))
  [ "$result" = FAIL ] && failed=$((failed + 1))
  [ "$result" = SKIP ] && skipped=$((skipped + 1))
done
if [ -f "$WORK/figure_logs" ]; then
  while read -r name; do
    echo "---- $name"
    grep -v -e '^\s*$' -e 'Warning' "$WORK/logs/$name.log" | tail -n 20
  done <"$WORK/figure_logs"
fi
echo "logs and runs: $WORK"
if [ $failed -gt 0 ]; then
  echo "FAIL: $failed of $total checks failed"; exit 1
fi
if [ $skipped -eq $total ]; then
  echo "FAIL: no check ran within BUDGET_S=$BUDGET_S"; exit 1
fi
echo "PASS: $((total - skipped)) of $total checks passed, $skipped skipped (not run within BUDGET_S)"
exit 0
