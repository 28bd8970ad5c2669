# Sourced by the GPU session scripts: output folder, environment and a record of the machine.
# OUT (where results go) and DATA (the MNIST folder) default here; sets R (the results folder)
# and PY (the Python to use).
set -u
OUT=${OUT:-/tmp/gpu_out}
DATA=${DATA:-.devdata/mnist}
R=$OUT/gpu_results
mkdir -p "$R"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
PY=${PY:-python3}
{ nvidia-smi -L; $PY -c "import jax, flax, optax; print('jax', jax.__version__, 'flax',
  flax.__version__, 'optax', optax.__version__, jax.devices())"; nproc; } > "$R/machine.txt" 2>&1
cat "$R/machine.txt"
