#!/usr/bin/env bash
# Every benchmark at the paper's sizes, in fp32 and bf16, in one command that ends within
# 8 minutes on one H100/H200, and one merged JSON.
#
#   bash benchmarks/accelerator.sh [--quick] [--only PART,...] [OUT.json]
#
# Parts, in this order (each a separate process, so each gets the whole device):
#   distill_bf16 distill_fp32   distill_step.py: Meta-Dataset ResNet-18, 84 px, ImageNet 448 +
#                               7 x 64 images per step (the URL recipe), 8 teachers run
#                               vmap / map / unstacked, against the plain student step
#   mtl_bf16 mtl_fp32           mtl_step.py: every multi-task method, SegNet at 288x384, batch 2
#   fewshot_bf16 fewshot_fp32   fewshot_eval.py: ResNet-18 width 1, 600 standard episodes,
#                               NCC / PA / TSA (TSA: as many episodes as its time allows)
# Each part has a time share; a part ends by the sum of its share and those before it (time
# a part leaves unused goes to the next), is killed there by `timeout`, and is told to stop
# timing 20 s earlier (--budget). A part that fails or is killed does not stop the others:
# its exit code, the end of its log and whatever JSON it had written are recorded.
#
# OUT.json (default $OUT/accelerator.json when $OUT is set, else benchmarks/accelerator.json)
# holds the device kind and count, jax version, each part's status, wall time, command and
# results (seconds per step or episode, images or episodes per second, compile times, FLOPs
# per call from XLA's cost analysis, achieved FLOP/s, MFU), and a flat summary; the parts'
# full logs go to OUT.log beside it.
#
# --only PART,...: only these parts (a part may then also use the shares of the skipped
# parts before it).
# --quick: tiny sizes (and a few MTL methods) that run on a CPU in 2-3 minutes: a smoke
# test of this script and of every benchmark's code path, not a measurement.
# Environment: PYTHON (default python3), BUDGET (seconds for all parts; default 465,
# --quick 300), COMPILE_THREADS (functions compiled at once; default 6, --quick 1).
# Wheels in .whl/ (benchmarks/device_wheels.sh) are installed into /tmp/site first when
# grain is not importable (the device machines lack it).
set -u
cd "$(dirname "$0")/.."

quick=0 only="" json=""
while (($#)); do
  case $1 in
    --quick) quick=1 ;;
    --only) only=$2; shift ;;
    -h|--help) sed -n '2,/^set -u/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) echo "accelerator.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) json=$1 ;;
  esac
  shift
done
json=${json:-${OUT:+$OUT/accelerator.json}}
json=${json:-benchmarks/accelerator.json}
PY=${PYTHON:-python3}
start=$SECONDS

if ! "$PY" -c "import grain" 2>/dev/null && compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1

if ((quick)); then
  total=${BUDGET:-300} threads=${COMPILE_THREADS:-1}
  distill="--teachers 3 --batch 4,2,2 --width 0.125 --image-size 32 --classes 5 --steps 2"
  mtl="--width 0.0625 --height 32 --width-px 32 --batch 2 --steps 2"
  mtl="$mtl --methods uniform,graddrop,pcgrad"  # one per kind: loss, features, params
  fewshot="--width 0.125 --image-size 32 --classes 5 --max-images 20 --episodes 4 --warmup 1"
  fewshot="$fewshot --batch 32 --chunk 2"
  # Compilation dominates a smoke run of the training steps: XLA's optimisations off there
  # (not for few-shot, whose 40-step TSA loops then run many times slower on a CPU).
  fast_compile="env JAX_DISABLE_MOST_OPTIMIZATIONS=1"
else
  total=${BUDGET:-465} threads=${COMPILE_THREADS:-6}
  distill="--domains meta-dataset --batch 448,64,64,64,64,64,64,64 --steps 10"
  mtl="--width 1 --height 288 --width-px 384 --batch 2 --steps 10"
  fewshot="--episodes 600 --warmup 10 --chunk 10"
  fast_compile=""
fi
distill="$distill --teacher-modes vmap,map,unstacked"
fewshot="$fewshot --methods ncc,pa,tsa"

# name, share of the total (per mille), command
parts=(
  "distill_bf16 215 $fast_compile $PY benchmarks/distill_step.py $distill --precision bf16"
  "distill_fp32 205 $fast_compile $PY benchmarks/distill_step.py $distill --precision fp32"
  "mtl_bf16     160 $fast_compile $PY benchmarks/mtl_step.py $mtl --precision bf16"
  "fewshot_bf16 150 $PY benchmarks/fewshot_eval.py $fewshot --precision bf16"
  "mtl_fp32     150 $fast_compile $PY benchmarks/mtl_step.py $mtl --precision fp32"
  "fewshot_fp32 120 $PY benchmarks/fewshot_eval.py $fewshot --precision fp32"
)

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
log=${json%.json}.log
mkdir -p "$(dirname "$json")"
: >"$log"
: >"$tmp/parts.tsv"
end=0
for part in "${parts[@]}"; do
  read -r name share command <<<"$part"
  end=$((end + total * share / 1000))
  if [[ -n $only && ",$only," != *",$name,"* ]]; then continue; fi
  limit=$((end - (SECONDS - start)))
  ((limit > 0)) || limit=0
  command="$command --compile-threads $threads --budget $((limit > 40 ? limit - 20 : limit / 2))"
  command="$command --json $tmp/$name.json"
  printf '[%4ds] %s: up to %d s\n' $((SECONDS - start)) "$name" "$limit"
  t0=$SECONDS
  if ((limit >= 10)); then
    # shellcheck disable=SC2086  # the command is split into words on purpose
    timeout -k 5 "$limit" $command >"$tmp/$name.log" 2>&1
    rc=$?
  else
    echo "skipped: only $limit s left of the $total s budget" >"$tmp/$name.log"
    rc=124
  fi
  printf '%s\t%d\t%d\t%d\t%s\n' "$name" "$rc" $((SECONDS - t0)) "$limit" "$command" \
      >>"$tmp/parts.tsv"
  { echo "===== $name (exit $rc, $((SECONDS - t0)) s): $command"; cat "$tmp/$name.log"; } >>"$log"
  printf '[%4ds] %s: exit %d\n' $((SECONDS - start)) "$name" "$rc"
done

"$PY" benchmarks/common.py merge "$json" "$tmp" "quick=$quick" "budget_s=$total" \
    "compile_threads=$threads" "total_wall_s=$((SECONDS - start))"
