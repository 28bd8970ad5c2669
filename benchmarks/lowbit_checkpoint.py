"""lowbit storage: a packed INT4 checkpoint of the MLP 784-1024-1024-10 weights vs float32.

    .venv/bin/python benchmarks/lowbit_checkpoint.py

Every kernel is stored as ``lowbit.encode(w, INT4, sawb_scale(w))`` (two codes
per byte plus one float32 scale); biases stay float32. Both checkpoints are
written with ``numpy.savez`` (uncompressed) and their file sizes compared; the
decoded kernels are checked to equal the INT4 weights the forward pass uses,
bit for bit. Writes ``benchmarks/results/lowbit_checkpoint.{json,png}``.
"""

from __future__ import annotations

import json
import pathlib
import tempfile

import _common
import jax
import jax.numpy as jnp
import numpy as np

import lowbit
from beyondbp import models


def main():
    _, params = models.mlp4bit(jax.random.key(0), (784, 1024, 1024, 10))
    layers = params["layers"]
    float_arrays, packed_arrays, exact = {}, {}, True
    for i in sorted(layers, key=int):
        w, b = layers[i]["kernel"], layers[i]["bias"]
        float_arrays[f"{i}.kernel"] = np.asarray(w)
        float_arrays[f"{i}.bias"] = np.asarray(b)
        s = lowbit.sawb_scale(w, lowbit.INT4)
        p = lowbit.encode(w, lowbit.INT4, s)
        packed_arrays[f"{i}.kernel.codes"] = np.asarray(p.codes)
        packed_arrays[f"{i}.kernel.scale"] = np.asarray(p.scale)
        packed_arrays[f"{i}.bias"] = np.asarray(b)
        exact &= bool(jnp.all(lowbit.decode(p) == lowbit.quantize(w, lowbit.INT4, scale=s)))
    with tempfile.TemporaryDirectory() as d:
        f32, f4 = pathlib.Path(d) / "f32.npz", pathlib.Path(d) / "int4.npz"
        np.savez(f32, **float_arrays)
        np.savez(f4, **packed_arrays)
        size32, size4 = f32.stat().st_size, f4.stat().st_size
    kernel32 = sum(v.nbytes for k, v in float_arrays.items() if k.endswith("kernel"))
    kernel4 = sum(v.nbytes for k, v in packed_arrays.items() if ".kernel." in k)
    result = {
        "model": "MLP 784-1024-1024-10",
        "float32_file_bytes": size32,
        "packed_file_bytes": size4,
        "file_ratio": size32 / size4,
        "kernel_bytes_float32": kernel32,
        "kernel_bytes_packed": kernel4,
        "kernel_ratio": kernel32 / kernel4,
        "decode_equals_forward_int4_weights": exact,
        "note": "biases (2058 values) stay float32 in both files; npz headers included",
    }
    print(json.dumps(result, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 2.5))
    ax.barh([0, 1], [size32 / 2**20, size4 / 2**20], color=["gray", "C0"])
    ax.set_yticks([0, 1], ["float32 npz", "packed INT4 npz"])
    ax.set_xlabel("MiB")
    ax.set_title(f"MLP 784-1024-1024-10 checkpoint: {size32 / size4:.2f}x smaller")
    fig.tight_layout()
    _common.save("lowbit_checkpoint", result, fig)


if __name__ == "__main__":
    main()
