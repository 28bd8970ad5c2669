#!/usr/bin/env bash
# One GPU measurement session, run from the repository root on a CUDA machine whose python3 has
# jax[cuda], flax, optax, chex, tqdm, matplotlib, hypothesis, pytest, pytest-xdist and
# pytest-timeout (the package itself is used from the checkout through PYTHONPATH).
#
#   OUT=/tmp/gpu DATA=/path/to/mnist bash benchmarks/gpu_session.sh
#
# 1. fwdgrad step time vs backprop and analog simulation throughput, alone on the GPU (timings
#    are only taken in this phase);
# 2. then, side by side on the same GPU: the long accuracy runs (each writes its history after
#    every epoch, so a run stopped by its time limit keeps what it measured), the cosine
#    benchmark at full float32 matmul precision, and the default test suite.
# Everything lands in $OUT/gpu_results.tgz plus the logs' tails on stdout.
SPEED_S=${SPEED_S:-100}
THROUGHPUT_S=${THROUGHPUT_S:-60}
LONG_S=${LONG_S:-240}
. "$(dirname "$0")/gpu_common.sh"

timeout "$SPEED_S" $PY benchmarks/fwdgrad_speed.py --batches 64,256,1024 \
  --out "$R/fwdgrad_speed_gpu" > "$R/speed.log" 2>&1
echo "speed rc=$?"
timeout "$THROUGHPUT_S" $PY benchmarks/analog_throughput.py --repeats 3 > "$R/throughput.log" 2>&1
echo "throughput rc=$?"

JAX_DEFAULT_MATMUL_PRECISION=highest timeout "$LONG_S" $PY benchmarks/fwdgrad_cosine.py \
  --out "$R/fwdgrad_cosine_gpu" > "$R/cosine.log" 2>&1 &
timeout "$LONG_S" $PY benchmarks/analog_mnist.py --method analog-eqprop-taox --epochs 12 \
  --data-dir "$DATA" > "$R/eqprop_taox.log" 2>&1 &
timeout "$LONG_S" $PY benchmarks/fwdgrad_accuracy.py --epochs 10 --eval-every-epoch \
  --methods backprop,fwdgrad-local,fwdgrad,fwdgrad-orthogonal \
  --out fwdgrad_accuracy_10ep_gpu --data-dir "$DATA" > "$R/fwdgrad_accuracy.log" 2>&1 &
# The package tests (not the CLI/multi-process/notebook ones, which exercise the host, not the
# accelerator), at full float32 matmul precision: XLA:GPU would otherwise use TF32 for float32 dots.
JAX_DEFAULT_MATMUL_PRECISION=highest timeout "$LONG_S" $PY -m pytest -q -rf -n 8 \
  -p no:cacheprovider --timeout 150 tests/test_fwdgrad_*.py tests/test_lowbit_*.py \
  tests/test_analog_*.py tests/test_composition.py tests/test_transforms_contract.py \
  tests/test_nonfinite.py tests/test_beyondbp_train.py > "$R/pytest.log" 2>&1 &
wait

# every result file this session wrote or rewrote (the benchmarks write into benchmarks/results)
find benchmarks/results -maxdepth 1 -type f -newer "$R/machine.txt" -exec cp {} "$R/" \;
for f in "$R"/*.log; do echo "== $f"; tail -c 1500 "$f" | tr '\r' '\n' | tail -n 12; done
tar czf "$OUT/gpu_results.tgz" -C "$OUT" gpu_results && rm -rf "$R"
