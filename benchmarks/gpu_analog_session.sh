#!/usr/bin/env bash
# GPU session 2 (issues 6 and 7): long runs that do not fit the 2-core CPU, side by side on one
# GPU. Run from a checkout on a CUDA machine whose python3 has jax[cuda], flax, optax, chex, tqdm
# and matplotlib (the package itself is used from the checkout through PYTHONPATH):
#
#   OUT=/tmp/gpu DATA=/path/to/mnist bash benchmarks/gpu_analog_session.sh
#
# 1. analog-eqprop-taox (read noise, cosine-decayed rates) with and without the mixed-precision
#    accumulator of analog.program, seeds 0-2, EPOCHS epochs each (seed stability);
# 2. the DESIGN.md composition chain for CHAIN_STEPS steps on full MNIST, all variants of
#    benchmarks/composition_chain.py.
# Each run writes its JSON after every evaluation, so one stopped by its time limit keeps what it
# measured. No timing is taken here (the runs share the GPU).
LONG_S=${LONG_S:-420}
EPOCHS=${EPOCHS:-6}
CHAIN_STEPS=${CHAIN_STEPS:-30000}
. "$(dirname "$0")/gpu_common.sh"

for seed in 0 1 2; do
  for mp in "" "--mixed-precision"; do
    timeout "$LONG_S" $PY benchmarks/analog_mnist.py --method analog-eqprop-taox --lr-decay \
      --epochs "$EPOCHS" --seed "$seed" $mp --data-dir "$DATA" \
      > "$R/eqprop_taox_s${seed}${mp:+_mp}.log" 2>&1 &
  done
done
timeout "$LONG_S" $PY benchmarks/composition_chain.py --steps "$CHAIN_STEPS" --eval-every 3000 \
  --hidden 64 --data-dir "$DATA" --out composition_chain_gpu > "$R/chain.log" 2>&1 &
wait

find benchmarks/results -maxdepth 1 -type f -newer "$R/machine.txt" -exec cp {} "$R/" \;
for f in "$R"/*.log; do echo "== $f"; tail -c 1500 "$f" | tr '\r' '\n' | grep -v "it/s]$" | tail -n 4; done
cp -r "$R" "$OUT/" 2>/dev/null; true
