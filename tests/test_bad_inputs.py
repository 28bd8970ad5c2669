"""The bad-input table: every public entry point rejects bad input early and clearly.

Each row calls the public API with one bad input and states the exception type
and fragments the message must contain: the argument, the value, and what would
be valid. Errors must come from our own checks at construction or call time
(never from deep inside XLA), so the messages are checked, not just the type.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import analog
import fwdgrad
import lowbit
from beyondbp import checkpoint, datasets, methods, models, train


@dataclasses.dataclass(frozen=True)
class Bad:
    id: str
    call: Callable[[], object]
    exc: type | tuple = (ValueError, TypeError)
    says: tuple[str, ...] = ()


def _dn():
    return (((1,), (0,)), ((), ()))


def _small():
    return datasets.load("mnist_small", "test")


def _data_dir_with(images: bytes, labels: bytes | None = None):
    """A temporary directory holding the MNIST test files with the given (gzipped) bytes."""
    import gzip
    import tempfile

    d = tempfile.mkdtemp(prefix="bad-data-")
    with open(f"{d}/t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(images)
    lab = (
        labels
        if labels is not None
        else gzip.compress(bytes([0, 0, 8, 1]) + (3).to_bytes(4, "big") + bytes([1, 2, 3]))
    )
    with open(f"{d}/t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(lab)
    return d


def _idx_images(n=3, claim=None):
    import gzip

    hdr = bytes([0, 0, 8, 3]) + (claim or n).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
    return gzip.compress(hdr + bytes(n * 784))


def _load_test(d):
    return datasets.load("mnist", "test", data_dir=d, download=False, verify=False)


def _setup():
    return methods.get("backprop").build(methods.MethodConfig(key=jax.random.key(0), widths=(8,)))


ROWS: list[Bad] = [
    # --- beyondbp.datasets ---
    Bad(
        "datasets.load unknown name",
        lambda: datasets.load("cifar10"),
        ValueError,
        ("name='cifar10'", "mnist_small"),
    ),
    Bad(
        "datasets.load unknown split",
        lambda: datasets.load("mnist_small", "val"),
        ValueError,
        ("split='val'", "'train' or 'test'"),
    ),
    Bad(
        "datasets.load missing files offline",
        lambda: datasets.load("fashion_mnist", data_dir="/nonexistent/dir", download=False),
        ValueError,
        ("train-images-idx3-ubyte.gz", "/nonexistent/dir", "data_dir"),
    ),
    Bad(
        "datasets.batches batch_size 0",
        lambda: next(datasets.batches(_small(), 0)),
        ValueError,
        ("batch_size=0", "positive integer"),
    ),
    Bad(
        "datasets.batches batch_size float",
        lambda: next(datasets.batches(_small(), 2.5)),
        ValueError,
        ("batch_size=2.5",),
    ),
    Bad(
        "datasets.batches batch too large",
        lambda: next(datasets.batches(_small(), 10**6)),
        ValueError,
        ("batch_size=1000000", "remainder='pad'"),
    ),
    Bad(
        "datasets.batches remainder",
        lambda: next(datasets.batches(_small(), 8, remainder="keep")),
        ValueError,
        ("remainder='keep'", "'drop' or 'pad'"),
    ),
    Bad(
        "datasets.batches epochs 0",
        lambda: next(datasets.batches(_small(), 8, epochs=0)),
        ValueError,
        ("epochs=0",),
    ),
    Bad(
        "datasets.batches start negative",
        lambda: next(datasets.batches(_small(), 8, start=-1)),
        ValueError,
        ("start=-1", "non-negative"),
    ),
    Bad(
        "datasets.batches empty set",
        lambda: next(
            datasets.batches(
                datasets.Dataset(
                    "e", "train", np.zeros((0, 28, 28), np.uint8), np.zeros((0,), np.uint8)
                ),
                4,
            )
        ),
        ValueError,
        ("empty",),
    ),
    Bad(
        "datasets.load corrupt gzip",
        lambda: _load_test(_data_dir_with(b"\x1f\x8b garbage")),
        ValueError,
        ("t10k-images-idx3-ubyte.gz", "truncated or corrupt", "replace it with a good copy"),
    ),
    Bad(
        "datasets.load wrong magic",
        lambda: _load_test(
            _data_dir_with(__import__("gzip").compress(bytes([0, 0, 8, 1]) + bytes(8)))
        ),
        ValueError,
        ("wrong magic number 0x00000801", "expected 0x00000803"),
    ),
    Bad(
        "datasets.load truncated payload",
        lambda: _load_test(_data_dir_with(_idx_images(3, claim=5))),
        ValueError,
        ("header says shape (5, 28, 28)", "truncated"),
    ),
    Bad(
        "datasets.load checksum mismatch",
        lambda: datasets.load(
            "mnist", "test", data_dir=_data_dir_with(_idx_images(3)), download=False
        ),
        ValueError,
        ("SHA-256", "does not match the official", "verify=False"),
    ),
    # --- beyondbp.models ---
    Bad(
        "models.MLP one width",
        lambda: models.MLP((784,), rngs=nnx.Rngs(0)),
        ValueError,
        ("widths=(784,)", "at least two positive integers"),
    ),
    Bad(
        "models.MLP zero width",
        lambda: models.MLP((784, 0, 10), rngs=nnx.Rngs(0)),
        ValueError,
        ("widths=(784, 0, 10)",),
    ),
    Bad(
        "models.MLP unknown activation",
        lambda: models.MLP((4, 2), activation="swish9", rngs=nnx.Rngs(0)),
        ValueError,
        ("activation='swish9'", "relu"),
    ),
    Bad(
        "models.MLP wrong input size",
        lambda: models.MLP((100, 10), rngs=nnx.Rngs(0))(jnp.ones((2, 28, 28))),
        ValueError,
        ("expects 100 input features", "(2, 28, 28)", "784 features after flattening"),
    ),
    Bad(
        "models.CNN num_classes 1",
        lambda: models.CNN(1, rngs=nnx.Rngs(0)),
        ValueError,
        ("num_classes=1", ">= 2"),
    ),
    Bad(
        "models.CNN wrong image shape",
        lambda: models.CNN(rngs=nnx.Rngs(0))(jnp.ones((2, 32, 32, 3))),
        ValueError,
        ("(batch, 28, 28", "(2, 32, 32, 3)"),
    ),
    # --- beyondbp.methods / train / checkpoint ---
    Bad(
        "methods.get unknown",
        lambda: methods.get("nope"),
        ValueError,
        ("unknown method 'nope'", "backprop"),
    ),
    Bad(
        "methods.MethodConfig model",
        lambda: methods.MethodConfig(key=jax.random.key(0), model="rnn"),
        ValueError,
        ("model='rnn'", "'mlp'", "'cnn'", "'resnet'", "'vit'"),
    ),
    Bad(
        "methods.MethodConfig steps",
        lambda: methods.MethodConfig(key=jax.random.key(0), steps=0),
        ValueError,
        ("steps=0",),
    ),
    Bad(
        "methods.register not a Method",
        lambda: methods.register("sgd"),
        TypeError,
        ("beyondbp.methods.Method", "str"),
    ),
    Bad(
        "train.train both budgets",
        lambda: train.train(_setup(), _small(), steps=1, epochs=1),
        ValueError,
        ("exactly one of steps= or epochs=",),
    ),
    Bad(
        "train.train steps 0",
        lambda: train.train(_setup(), _small(), steps=0),
        ValueError,
        ("steps=0", "positive"),
    ),
    Bad(
        "train.train batch too large",
        lambda: train.train(_setup(), _small(), steps=1, batch_size=10**5),
        ValueError,
        ("batch_size=100000", "smaller batch"),
    ),
    Bad(
        "train.train checkpoint_every without dir",
        lambda: train.train(_setup(), _small(), steps=1, checkpoint_every=5),
        ValueError,
        ("checkpoint_every=", "checkpoint_dir="),
    ),
    Bad(
        "train.train not a Setup",
        lambda: train.train({"params": 1}, _small(), steps=1),
        TypeError,
        ("beyondbp.methods.Setup", "dict"),
    ),
    Bad(
        "train.train negative epochs",
        lambda: train.train(_setup(), _small(), epochs=-1),
        ValueError,
        ("epochs=-1", "positive integer"),
    ),
    Bad(
        "train.train eval_every 0",
        lambda: train.train(_setup(), _small(), steps=2, eval_every=0),
        ValueError,
        ("eval_every=0", ">= 1"),
    ),
    Bad(
        "checkpoint.save keep 0",
        lambda: checkpoint.save("/tmp/x-never", 1, {}, keep=0),
        ValueError,
        ("keep=0", "at least 1"),
    ),
    Bad(
        "checkpoint.save negative step",
        lambda: checkpoint.save("/tmp/x-never", -1, {}),
        ValueError,
        ("step=-1",),
    ),
    Bad(
        "checkpoint.restore garbage file",
        lambda: checkpoint.restore(__file__, {}),
        checkpoint.CheckpointError,
        ("not a readable checkpoint", "test_bad_inputs.py"),
    ),
    # --- lowbit ---
    Bad(
        "lowbit.quantize format as string",
        lambda: lowbit.quantize(jnp.ones(3), "int4"),
        TypeError,
        ("fmt='int4'", "lowbit.Format"),
    ),
    Bad(
        "lowbit.quantize unknown rounding",
        lambda: lowbit.quantize(jnp.ones(3), lowbit.INT4, rounding="up"),
        ValueError,
        ("rounding='up'", "nearest", "stochastic"),
    ),
    Bad(
        "lowbit.quantize stochastic without key",
        lambda: lowbit.quantize(jnp.ones(3), lowbit.INT4, rounding="stochastic"),
        ValueError,
        ("key=", "rounding='nearest'"),
    ),
    Bad(
        "lowbit.quantize unknown phase",
        lambda: lowbit.quantize(jnp.ones(3), lowbit.RADIX4_FP4, phase="middle"),
        ValueError,
        ("phase='middle'", "even", "odd"),
    ),
    Bad(
        "lowbit.quantize integer input",
        lambda: lowbit.quantize(jnp.ones(3, jnp.int32), lowbit.INT4),
        TypeError,
        ("floating", "int32"),
    ),
    Bad(
        "lowbit.compute_scale unknown method",
        lambda: lowbit.compute_scale(jnp.ones(3), lowbit.INT4, method="mean"),
        ValueError,
        ("method='mean'", "max", "delayed"),
    ),
    Bad(
        "lowbit.log_format radix 1",
        lambda: lowbit.log_format(1, 3, 3),
        ValueError,
        ("radix=1", "2, 4 or 16"),
    ),
    Bad(
        "lowbit.log_format too many bits",
        lambda: lowbit.log_format(4, 9, 3),
        ValueError,
        ("bits=10", "at most 8"),
    ),
    Bad(
        "lowbit.int_format 0 bits",
        lambda: lowbit.int_format(0),
        ValueError,
        ("bits=0", "2 <= bits <= 8"),
    ),
    Bad("lowbit.int_format 40 bits", lambda: lowbit.int_format(40), ValueError, ("bits=40",)),
    Bad(
        "lowbit.float_format 0 exponent bits",
        lambda: lowbit.float_format(0, 3, 1),
        ValueError,
        ("exponent_bits=0", ">= 1"),
    ),
    Bad(
        "lowbit.QuantConfig weights string",
        lambda: lowbit.QuantConfig(weights="int4"),
        TypeError,
        ("weights='int4'", "lowbit.INT4"),
    ),
    Bad(
        "lowbit.QuantConfig integer accumulation",
        lambda: lowbit.QuantConfig(accumulation=jnp.int32),
        ValueError,
        ("accumulation=", "floating dtype"),
    ),
    Bad(
        "lowbit.QuantConfig TPR with radix-2 gradients",
        lambda: lowbit.QuantConfig(gradients=lowbit.E2M1),
        ValueError,
        ("two_phase=True", "E2M1", "two_phase=False"),
    ),
    Bad(
        "lowbit.QuantConfig gradient rounding",
        lambda: lowbit.QuantConfig(gradient_rounding="floor"),
        ValueError,
        ("gradient_rounding='floor'", "nearest"),
    ),
    Bad(
        "lowbit.quantize_updates scaling",
        lambda: lowbit.quantize_updates(scaling="min"),
        ValueError,
        ("scaling='min'", "max", "delayed"),
    ),
    Bad(
        "lowbit.quantize_updates rounding",
        lambda: lowbit.quantize_updates(rounding="x"),
        ValueError,
        ("rounding='x'",),
    ),
    Bad(
        "lowbit.quantize_updates history 0",
        lambda: lowbit.quantize_updates(scaling="delayed", history_length=0),
        ValueError,
        ("history_length=0", ">= 1"),
    ),
    Bad(
        "lowbit.quantize_updates float seed",
        lambda: lowbit.quantize_updates(seed=1.5),
        TypeError,
        ("seed=1.5", "integer"),
    ),
    Bad(
        "lowbit.dot_general shape mismatch",
        lambda: lowbit.dot_general(
            jnp.ones((2, 3)), jnp.ones((4, 5)), _dn(), config=lowbit.QuantConfig()
        ),
        TypeError,
        ("contracting dimensions", "(3,)", "(4,)"),
    ),
    Bad(
        "lowbit.dot_general missing config",
        lambda: lowbit.dot_general(jnp.ones((2, 3)), jnp.ones((3, 5)), _dn(), config=None),
        TypeError,
        ("config=None", "lowbit.QuantConfig"),
    ),
    Bad(
        "lowbit.dot_general integer lhs",
        lambda: lowbit.dot_general(
            jnp.ones((2, 3), jnp.int32), jnp.ones((3, 5)), _dn(), config=lowbit.QuantConfig()
        ),
        TypeError,
        ("lhs", "floating", "int32"),
    ),
    Bad(
        "lowbit.nnx.Linear zero features",
        lambda: lowbit.nnx.Linear(0, 3, rngs=nnx.Rngs(0)),
        ValueError,
        ("Linear(0, 3)", "positive"),
    ),
    Bad(
        "lowbit.nnx.Conv misspelt option",
        lambda: lowbit.nnx.Conv(1, 2, 3, rngs=nnx.Rngs(0), use_bais=False),
        TypeError,
        ("lowbit.nnx.Conv", "use_bais", "use_bias"),
    ),
    Bad(
        "lowbit.decode not packed",
        lambda: lowbit.decode("abc"),
        TypeError,
        ("lowbit.Packed", "str"),
    ),
]

_K = jax.random.key(0)
_P = jnp.ones(3)


def _sq(p):
    return jnp.sum(p**2)


def _tiles():
    return analog.init_tiles(_K, jnp.ones((3, 4)), analog.presets.IDEAL)


def _net():
    return analog.init_energy_network(_K, [4, 3, 2])


ROWS += [
    # --- fwdgrad ---
    Bad(
        "fwdgrad.fwd_grad zero tangents",
        lambda: fwdgrad.fwd_grad(_sq, num_tangents=0),
        ValueError,
        ("num_tangents=0", "at least one"),
    ),
    Bad(
        "fwdgrad.fwd_grad float tangents",
        lambda: fwdgrad.fwd_grad(_sq, num_tangents=2.5),
        TypeError,
        ("num_tangents=2.5", "int >= 1"),
    ),
    Bad(
        "fwdgrad.fwd_grad unknown tangent",
        lambda: fwdgrad.fwd_grad(_sq, tangent="uniform"),
        ValueError,
        ("tangent='uniform'", "rademacher", "gaussian"),
    ),
    Bad(
        "fwdgrad.fwd_grad unknown aggregate",
        lambda: fwdgrad.fwd_grad(_sq, aggregate="median"),
        ValueError,
        ("aggregate='median'", "mean", "orthogonal"),
    ),
    Bad(
        "fwdgrad.fwd_grad argnums out of range",
        lambda: fwdgrad.fwd_grad(_sq, argnums=3)(_K, _P),
        ValueError,
        ("argnums=3",),
    ),
    Bad(
        "fwdgrad.fwd_grad non-scalar loss",
        lambda: fwdgrad.fwd_grad(lambda p: p * 2)(_K, _P),
        ValueError,
        ("scalar", "(3,)", "jnp.mean"),
    ),
    Bad(
        "fwdgrad.fwd_grad integer params",
        lambda: fwdgrad.fwd_grad(_sq)(_K, jnp.ones(3, jnp.int32)),
        TypeError,
        ("int32", "floating-point"),
    ),
    Bad(
        "fwdgrad.fwd_grad float as key",
        lambda: fwdgrad.fwd_grad(_sq)(3.0, _P),
        TypeError,
        ("not a PRNG key", "jax.random.key"),
    ),
    Bad(
        "fwdgrad.fwd_grad not callable",
        lambda: fwdgrad.fwd_grad(3),
        TypeError,
        ("fun=3", "callable"),
    ),
    Bad(
        "fwdgrad.fwd_grad orthogonal K > n",
        lambda: fwdgrad.fwd_grad(_sq, num_tangents=5, aggregate="orthogonal")(_K, _P),
        ValueError,
        ("num_tangents=5", "3 parameters", "num_tangents <= 3"),
    ),
    Bad(
        "fwdgrad.forward_gradient negative K",
        lambda: fwdgrad.forward_gradient(num_tangents=-1),
        ValueError,
        ("num_tangents=-1",),
    ),
    Bad(
        "fwdgrad.forward_gradient unknown tangent",
        lambda: fwdgrad.forward_gradient(tangent="sobol"),
        ValueError,
        ("tangent='sobol'", "rademacher"),
    ),
    Bad(
        "fwdgrad.forward_gradient string seed",
        lambda: fwdgrad.forward_gradient(seed="a"),
        TypeError,
        ("seed='a'", "int"),
    ),
    Bad(
        "fwdgrad.forward_gradient missing loss_fn",
        lambda: fwdgrad.forward_gradient().update(None, fwdgrad.forward_gradient().init(_P), _P),
        ValueError,
        ("loss_fn=",),
    ),
    Bad(
        "fwdgrad.cosine_similarity mismatched trees",
        lambda: fwdgrad.cosine_similarity({"a": _P}, {"b": _P}),
        ValueError,
        ("different pytree structures",),
    ),
    Bad(
        "fwdgrad.activity_forward_gradient zero tangents",
        lambda: fwdgrad.activity_forward_gradient(num_tangents=0),
        ValueError,
        ("num_tangents=0",),
    ),
    # --- analog ---
    Bad(
        "analog.IOConfig 0 DAC bits",
        lambda: analog.IOConfig(inp_bits=0),
        ValueError,
        ("inp_bits=0", "[2, 24]", "None"),
    ),
    Bad(
        "analog.IOConfig 40 ADC bits",
        lambda: analog.IOConfig(out_bits=40, out_bound=10.0),
        ValueError,
        ("out_bits=40", "[2, 24]"),
    ),
    Bad(
        "analog.IOConfig ADC without bound",
        lambda: analog.IOConfig(out_bits=8),
        ValueError,
        ("out_bits=8", "out_bound"),
    ),
    Bad(
        "analog.IOConfig negative read noise",
        lambda: analog.IOConfig(read_noise=-0.1),
        ValueError,
        ("read_noise=-0.1", ">= 0"),
    ),
    Bad(
        "analog.IOConfig negative weight noise",
        lambda: analog.IOConfig(w_noise=-1.0),
        ValueError,
        ("w_noise=-1.0", ">= 0"),
    ),
    Bad(
        "analog.ConstantStep negative step",
        lambda: analog.ConstantStep(dw_min=-1.0),
        ValueError,
        ("dw_min=-1.0",),
    ),
    Bad(
        "analog.SoftBounds inverted bounds",
        lambda: analog.SoftBounds(g_min=1.0, g_max=0.0),
        ValueError,
        ("g_max > g_min", "g_min=1.0"),
    ),
    Bad(
        "analog.ConstantStep stuck fractions > 1",
        lambda: analog.ConstantStep(stuck_on=0.7, stuck_off=0.6),
        ValueError,
        ("stuck_on + stuck_off", "> 1"),
    ),
    Bad(
        "analog.init_tiles zero tile",
        lambda: analog.init_tiles(_K, jnp.ones((3, 4)), analog.presets.IDEAL, (0, 64)),
        ValueError,
        ("tile_shape=(0, 64)", "positive integers"),
    ),
    Bad(
        "analog.init_tiles 1-D weights",
        lambda: analog.init_tiles(_K, jnp.ones((3,)), analog.presets.IDEAL),
        ValueError,
        ("shape (3,)", "2-D"),
    ),
    Bad(
        "analog.mvm wrong input size",
        lambda: analog.mvm(_tiles(), jnp.ones((2, 5))),
        ValueError,
        ("(2, 5)", "must be 3"),
    ),
    Bad(
        "analog.mvm noise without key",
        lambda: analog.mvm(_tiles(), jnp.ones((2, 3)), analog.IOConfig(read_noise=0.1)),
        ValueError,
        ("read_noise=0.1", "key="),
    ),
    Bad(
        "analog.pulse_update unknown mode",
        lambda: analog.pulse_update(_tiles(), jnp.ones(3), jnp.ones(4), 0.1, _K, mode="x"),
        ValueError,
        ("mode='x'", "stochastic", "deterministic"),
    ),
    Bad(
        "analog.pulse_update bl_management not a bool",
        lambda: analog.pulse_update(
            _tiles(), jnp.ones((1, 3)), jnp.ones((1, 4)), 0.1, _K, bl_management="yes"
        ),
        TypeError,
        ("bl_management='yes'", "True", "False"),
    ),
    Bad(
        "analog.equilibrium_propagation beta 0",
        lambda: analog.equilibrium_propagation(beta=0.0, free_steps=10, nudged_steps=5),
        ValueError,
        ("beta=0.0", "non-zero"),
    ),
    Bad(
        "analog.equilibrium_propagation 0 free steps",
        lambda: analog.equilibrium_propagation(beta=0.5, free_steps=0, nudged_steps=5),
        ValueError,
        ("free_steps=0", "positive integer"),
    ),
    Bad(
        "analog.equilibrium_propagation missing batch",
        lambda: (lambda t: t.update(None, t.init(_net()), _net()))(
            analog.equilibrium_propagation(beta=0.5, free_steps=5, nudged_steps=3)
        ),
        ValueError,
        ("batch=(x, y)",),
    ),
    Bad(
        "analog.activity_difference beta 0",
        lambda: analog.activity_difference(
            _net(), jnp.ones((2, 4)), jnp.array([0, 1]), beta=0.0, free_steps=5, nudged_steps=3
        ),
        ValueError,
        ("beta=0.0",),
    ),
    Bad(
        "analog.program unknown pulse",
        lambda: analog.program(analog.presets.IDEAL, pulse="laser"),
        ValueError,
        ("pulse='laser'", "stochastic", "deterministic"),
    ),
    Bad(
        "analog.program bad tile shape",
        lambda: analog.program(analog.presets.IDEAL, tile_shape=(64,)),
        ValueError,
        ("tile_shape=(64,)", "pair of positive integers"),
    ),
    Bad(
        "analog.program device as string",
        lambda: analog.program("taox"),
        TypeError,
        ("device='taox'", "analog.presets.TAOX_RERAM"),
    ),
    Bad(
        "analog.init_energy_network one layer",
        lambda: analog.init_energy_network(_K, [784]),
        ValueError,
        ("layer_sizes=[784]", "at least two"),
    ),
    Bad(
        "analog.predict wrong input size",
        lambda: analog.predict(analog.init_energy_network(_K, [784, 10, 10]), jnp.ones((2, 5))),
        ValueError,
        ("5 features", "784"),
    ),
    Bad(
        "analog.energy_report not a ledger",
        lambda: analog.energy_report("ledger", None),
        TypeError,
        ("analog.EnergyLedger", "str"),
    ),
]


def test_table_is_large_enough():
    assert len(ROWS) >= 60, f"only {len(ROWS)} bad inputs in the table; the bar is 60"


def test_ids_unique():
    ids = [r.id for r in ROWS]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_bad_input_is_rejected_clearly(row):
    with pytest.raises(row.exc) as e:
        row.call()
    msg = str(e.value)
    for fragment in row.says:
        assert fragment in msg, f"message lacks {fragment!r}: {msg}"
    assert "Traceback" not in msg and len(msg) < 1500
