"""Shared test configuration.

Every test runs with JAX's strict dtype promotion so that silent float64 or
int/float promotion bugs fail loudly (the equinox/lineax convention, see
../shared/STYLE.md).
"""

from __future__ import annotations

import hashlib
import os
import pathlib

# The suite's time is mostly XLA:CPU compiling many small programs, not running them: these
# flags cut compile time about 3x (measured on the contract and composition tests: 153 s ->
# 92 s) at the cost of slower generated code, which tests do not time. They go into the
# environment before jax starts a backend, so xdist workers, notebook kernels and the CLI
# subprocesses of the resume tests inherit the same flags (bit-identity checks compare runs
# made under the same flags). BEYONDBP_TEST_FULL_OPT=1 runs the suite with XLA's defaults.
from _multidevice import FAST_COMPILE

if os.environ.get("BEYONDBP_TEST_FULL_OPT") != "1":
    _flags = os.environ.get("XLA_FLAGS", "").split()
    os.environ["XLA_FLAGS"] = " ".join(_flags + [f for f in FAST_COMPILE if f not in _flags])

# XLA:CPU compiles the same small programs (random initialisers of each shape, the same
# train steps) in every xdist worker, notebook kernel and CLI subprocess: JAX's persistent
# compilation cache lets every process after the first load them instead (one initialiser:
# 1-2 s to compile on a loaded 2-core machine, 0.05 s to load). The cache key covers the
# program, the XLA flags and the jax/jaxlib versions, so a hit is the same executable a
# compile would give. Set through the environment so that subprocesses share it.
# BEYONDBP_TEST_JAX_CACHE=0 turns it off; a path moves it.
if os.environ.get("BEYONDBP_TEST_JAX_CACHE") != "0":
    os.environ.setdefault(
        "JAX_COMPILATION_CACHE_DIR",
        os.environ.get("BEYONDBP_TEST_JAX_CACHE")
        or str(pathlib.Path(__file__).resolve().parents[1] / ".jax_cache"),
    )
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(2 * 2**30))

import jax
import pytest


@pytest.fixture(autouse=True)
def _strict_dtype_promotion(request):
    """Strict promotion for every test, except those marked ``standard_promotion``.

    Some third-party transforms (optax.adam's bias correction mixes a Python float
    with an int32 count) are not strict-safe; tests that run them are marked.
    """
    mode = "standard" if request.node.get_closest_marker("standard_promotion") else "strict"
    with jax.numpy_dtype_promotion(mode):
        yield


REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_MNIST = REPO.parent / "shared" / "data" / "mnist"


@pytest.fixture(scope="session")
def mnist_dir() -> pathlib.Path:
    """Directory with the full official MNIST IDX files, or skip.

    Looks at ``$BEYONDBP_TEST_MNIST`` first, then ``../shared/data/mnist`` beside
    the clone. Tests that need the full set skip with the reason when neither
    exists; nothing is ever downloaded by the test suite.
    """
    candidates = [os.environ.get("BEYONDBP_TEST_MNIST"), str(SHARED_MNIST)]
    names = (
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    )
    for c in candidates:
        if c and all((pathlib.Path(c) / n).is_file() for n in names):
            return pathlib.Path(c)
    pytest.skip(
        "full MNIST not found: set BEYONDBP_TEST_MNIST or place the four official "
        f"IDX .gz files in {SHARED_MNIST} (tests never download)"
    )


def sha256(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
