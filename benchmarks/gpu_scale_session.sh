#!/usr/bin/env bash
# GPU session for issues 17-19 (stop 32): one prepared script for one 15-minute device lease.
# Run from the repository root on a CUDA machine whose python3 has jax[cuda], flax, optax, chex,
# tqdm, matplotlib and pytest (the package is used from the checkout through PYTHONPATH):
#
#   OUT=/tmp/gpu MNIST=/path/mnist FASHION=/path/fashion_mnist bash benchmarks/gpu_scale_session.sh
#
# Phase 1 (PHASE1), timings alone on the GPU, each under its own cap:
#   fwdgrad's user path, K = 1 and K = 4 with strategy auto/loop/vmap (issue 18's GPU target);
#   the analog throughput workload, float32 and compact state (issue 17, item 4);
#   Baydin et al.'s time to loss, FG against BP, three MNIST models (issue 18).
# Phase 2 (PHASE2), accuracy runs side by side until DEADLINE_S (no timing is read from them):
#   ResNet-20 and the ViT on Fashion-MNIST, RECIPES x SEEDS at LOWBIT_BUDGET, one process per
#   recipe and seed (issue 19); merge with `lowbit_recipes.py --merge`;
#   Ren et al.'s M/1/16, BP and LG-FG-A, one process per row and seed, on MNIST ("ren") and
#   on Fashion-MNIST ("ren_fashion", not in the default PHASE2) (issue 18);
#   Tiki-Taka on 784-256-128-10, TaOx, several transfer settings (issue 17);
#   the package tests of the three libraries, at full float32 matmul precision.
# Every run writes its JSON when it ends, into benchmarks/results/$TAG/; those files and the
# logs come back as $OUT/gpu_results.tgz. Sizes are env variables so that a CPU smoke run of this
# script (tiny sizes) checks every command line before a lease is spent.
set -u
OUT=${OUT:-/tmp/gpu_out}
TAG=${TAG:-gpu_h200_s32}
MNIST=${MNIST:-.devdata/mnist}
FASHION=${FASHION:-.devdata/fashion_mnist}
LOWBIT_BUDGET=${LOWBIT_BUDGET:---epochs 15}
REN_ARGS=${REN_ARGS:---epochs 20 --warmup-epochs 2}
SPEED_ARGS=${SPEED_ARGS:-}
PYTEST_FILES=${PYTEST_FILES:-tests/test_lowbit_*.py tests/test_fwdgrad_*.py tests/test_analog_*.py}
TT_STEPS=${TT_STEPS:-9370}          # 10 epochs at batch 64
SPEED_S=${SPEED_S:-60}
THROUGHPUT_S=${THROUGHPUT_S:-60}
BAYDIN_S=${BAYDIN_S:-75}
BAYDIN_ARGS=${BAYDIN_ARGS:---steps-logreg 3000 --steps-mlp 1500 --steps-cnn 1500}
DEADLINE_S=${DEADLINE_S:-540}       # from the start of this script
PHASE1=${PHASE1-speed throughput baydin}
# Stop 32's lease ran all five groups at once (24 processes): the Ren runs (107-116 s each)
# and two ViT seeds finished in 378 s, the 12 ResNet runs did not. Measured there: 4 ResNet
# processes ran 3 epochs in about 45 s, 12 processes (ResNet and ViT) 3 epochs in 75 s, so the
# 15-epoch ResNet table (15 processes with SUN2020_RELU) is about 8 minutes: a lease of its own
# (PHASE1="" PHASE2=resnet).
PHASE2=${PHASE2-resnet vit ren tikitaka tests}
RECIPES=${RECIPES:-float32 SUN2020 SUN2020_RELU NVFP4_2025 MXFP4}
SEEDS=${SEEDS:-0 1 2}
SMOKE_ARGS=${SMOKE_ARGS:-}          # e.g. "--test-examples 64" for a CPU smoke run
START=$(date +%s)
R=benchmarks/results/$TAG
L=$R/logs
mkdir -p "$L" "$OUT"
# The data travel as .xz (the lease's tree is limited to 64 MiB); the loaders read raw IDX files.
unpack() {
  local d=$1 to=/tmp/data_$TAG/$(basename "$1")
  mkdir -p "$to"
  python3 -c "import lzma, pathlib, shutil, sys
for f in pathlib.Path(sys.argv[1]).iterdir():
    if f.suffix == '.xz':
        with lzma.open(f) as a, open(pathlib.Path(sys.argv[2]) / f.stem, 'wb') as b:
            shutil.copyfileobj(a, b)
    elif f.is_file():
        shutil.copy(f, sys.argv[2])" "$d" "$to"
  echo "$to"
}
MNIST=$(unpack "$MNIST")
FASHION=$(unpack "$FASHION")
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-/tmp/jax_cache_$TAG}
PY=${PY:-python3}
{ nvidia-smi -L 2>/dev/null; $PY -c "import jax, flax, optax; print('jax', jax.__version__, 'flax',
  flax.__version__, 'optax', optax.__version__, jax.devices())"; nproc; } > "$L/machine.txt" 2>&1
cat "$L/machine.txt"
left() { echo $((DEADLINE_S - ($(date +%s) - START))); }

# ---- phase 1: timings, alone (PHASE1="" skips it) ----
if [[ " $PHASE1 " == *" speed "* ]]; then
  timeout "$SPEED_S" $PY benchmarks/fwdgrad_speed.py --user-path-only --batches 64,256 \
    $SPEED_ARGS --out "$R/fwdgrad_speed_user_path" > "$L/speed.log" 2>&1
  echo "speed rc=$? at $(($(date +%s) - START)) s"
fi
if [[ " $PHASE1 " == *" throughput "* ]]; then
  timeout "$THROUGHPUT_S" $PY benchmarks/analog_throughput.py --repeats 3 --rounds 3 \
    --name "$TAG/analog_throughput" > "$L/throughput.log" 2>&1
  echo "throughput rc=$? at $(($(date +%s) - START)) s"
fi
if [[ " $PHASE1 " == *" baydin "* ]]; then
  timeout "$BAYDIN_S" $PY benchmarks/baydin2022.py --no-functions --loop-models "" \
    --tangents gaussian,rademacher $BAYDIN_ARGS --data-dir "$MNIST" \
    --out "$R/baydin2022_gpu" > "$L/baydin.log" 2>&1
  echo "baydin rc=$? at $(($(date +%s) - START)) s"
fi

# ---- phase 2: accuracy runs side by side, the groups named in PHASE2 ----
T=$(left)
echo "phase 2 ($PHASE2): $T s left"
lowbit_runs() { # $1 = model: one process per recipe and seed
  for recipe in $RECIPES; do
    for seed in $SEEDS; do
      timeout "$T" $PY benchmarks/lowbit_recipes.py --models "$1" --recipes "$recipe" \
        --seeds "$seed" $LOWBIT_BUDGET --no-timing --data-dir "$FASHION" $SMOKE_ARGS \
        --out "$R/lowbit_recipes_$1_${recipe}_s${seed}.json" \
        > "$L/$1_${recipe}_s${seed}.log" 2>&1 &
    done
  done
}
[[ " $PHASE2 " == *" resnet "* ]] && lowbit_runs resnet
[[ " $PHASE2 " == *" vit "* ]] && lowbit_runs vit
ren_runs() { # $1 = data set, $2 = its folder, $3 = name part: one process per row and seed
  for row in BP LG-FG-A; do
    for seed in $SEEDS; do
      timeout "$T" $PY benchmarks/ren2023_mnist.py --dataset "$1" --archs M/1/16 --rows "$row" \
        --seeds "$seed" $REN_ARGS --data-dir "$2" \
        --out "$TAG/ren2023_$3_m116_${row}_s${seed}" > "$L/ren_$3_${row}_s${seed}.log" 2>&1 &
    done
  done
}
[[ " $PHASE2 " == *" ren "* ]] && ren_runs mnist "$MNIST" mnist
# Ren's set-up on Fashion-MNIST (issue 18)
[[ " $PHASE2 " == *" ren_fashion "* ]] && ren_runs fashion_mnist "$FASHION" fashion
if [[ " $PHASE2 " == *" tikitaka "* ]]; then
  for v in 8:0.1 8:0.03; do
    n=$(echo "$v" | tr ':.' '__')
    timeout "$T" $PY benchmarks/analog_tikitaka_transfer.py --steps "$TT_STEPS" \
      --widths 256,128 --variants "$v" --data-dir "$MNIST" --out "$TAG/analog_tikitaka_${n}" \
      > "$L/tikitaka_${n}.log" 2>&1 &
  done
fi
if [[ " $PHASE2 " == *" tests "* ]]; then
  JAX_DEFAULT_MATMUL_PRECISION=highest timeout "$((T - 10))" $PY -m pytest -q -rf \
    -p no:cacheprovider --timeout 200 $PYTEST_FILES > "$L/pytest.log" 2>&1 &
fi
wait
echo "phase 2 done at $(($(date +%s) - START)) s"

for f in "$L"/*.log; do
  echo "== $f"
  tail -c 1200 "$f" | tr '\r' '\n' | grep -v "it/s]$" | tail -n 3
done
tar czf "$OUT/gpu_results.tgz" "$R"
ls -la "$OUT"
