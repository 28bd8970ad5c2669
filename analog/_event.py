"""Build, load and call the event-driven update kernel (``pulse_update(..., impl="event")``).

The kernel (``_event_kernel.cc``, an XLA FFI handler) is compiled on first use with the
system's C++ compiler against the headers that ship with jaxlib (``jax.ffi.include_dir()``),
like ``torch.utils.cpp_extension.load``: no build step at install time, nothing to do for users
who never ask for it. The shared library is cached under ``$BEYONDBP_CACHE_DIR`` (default
``~/.cache/beyondbp``) by a hash of the source, the jax version and the compiler command, and
written atomically, so parallel test workers or processes can build it at the same time.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import pathlib
import platform
import shutil
import subprocess
import tempfile
import threading

import jax
import jax.numpy as jnp
import numpy as np

_SOURCE = pathlib.Path(__file__).with_name("_event_kernel.cc")
_TARGET = "beyondbp_event_update"
_FLAGS = ("-O3", "-std=c++17", "-shared", "-fPIC", "-fno-math-errno", "-fno-trapping-math",
          "-fopenmp-simd", "-march=native", "-pthread")
_lock = threading.Lock()
_state: dict = {}


class EventKernelUnavailable(RuntimeError):
    """The event-driven kernel could not be built or loaded here (no C++ compiler, ...)."""


def _compiler() -> str:
    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") \
        or shutil.which("clang++")
    if not cxx:
        raise EventKernelUnavailable(
            "impl='event' compiles a small C++ kernel on first use and found no C++ compiler "
            "(set CXX or install g++/clang++); impl='fast' needs none and gives the same results")
    return cxx


def _cache_dir() -> pathlib.Path:
    root = os.environ.get("BEYONDBP_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "beyondbp")
    return pathlib.Path(root)


def _cpu_id() -> str:
    ident = platform.machine() + platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            lines = [ln for ln in f if ln.startswith(("model name", "flags"))]
        ident += "".join(sorted(set(lines)))
    except OSError:
        pass
    return ident


def library_path() -> pathlib.Path:
    """Build the kernel if needed and return the path of the shared library."""
    cxx = _compiler()
    cmd = [cxx, *_FLAGS, "-I", jax.ffi.include_dir()]
    # -march=native: a library built for one CPU must not be loaded on another.
    digest = hashlib.sha256(_SOURCE.read_bytes() + jax.__version__.encode()
                            + " ".join(cmd).encode() + _cpu_id().encode()).hexdigest()[:16]
    out = _cache_dir() / f"event_update_{digest}.so"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
    os.close(fd)
    try:
        res = subprocess.run([*cmd, str(_SOURCE), "-o", tmp], capture_output=True, text=True)
        if res.returncode != 0:
            raise EventKernelUnavailable(
                f"building the impl='event' kernel failed ({' '.join(cmd)}):\n{res.stderr[-2000:]}"
                "\nimpl='fast' needs no compiler and gives the same results")
        os.replace(tmp, out)                       # atomic: a concurrent build loses nothing
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return out


def ensure_registered() -> None:
    """Compile (once per machine), load and register the FFI target (once per process)."""
    with _lock:
        if "lib" in _state:
            return
        lib = ctypes.cdll.LoadLibrary(str(library_path()))
        jax.ffi.register_ffi_target(_TARGET, jax.ffi.pycapsule(lib.BeyondbpEventUpdate),
                                    platform="cpu")
        _state["lib"] = lib


def available() -> bool:
    """Whether ``impl="event"`` can run here (builds the kernel if it is not cached yet)."""
    try:
        ensure_registered()
    except (EventKernelUnavailable, OSError):
        return False
    return True


def event_update(g_plus, g_minus, var_plus, var_minus, wx, nx, wd, nd, seeds, *, kind: int,
                 dw_min: float, dw_min_std: float, gamma_up: float, gamma_down: float):
    """Call the kernel: new ``(g_plus, g_minus)`` and the int32 number of coincidences.

    The conductances are aliased to the outputs, so under ``jax.jit`` with donated tiles the
    devices that receive no pulse are neither read nor written.
    """
    ensure_registered()
    call = jax.ffi.ffi_call(
        _TARGET,
        (jax.ShapeDtypeStruct(g_plus.shape, jnp.float32),
         jax.ShapeDtypeStruct(g_minus.shape, jnp.float32),
         jax.ShapeDtypeStruct((), jnp.int32)),
        input_output_aliases={0: 0, 1: 1},
        vmap_method="sequential")
    return call(g_plus, g_minus, wx, nx, wd, nd, seeds, *var_plus, *var_minus,
                kind=np.int64(kind), dw_min=np.float32(dw_min),
                dw_min_std=np.float32(dw_min_std), gamma_up=np.float32(gamma_up),
                gamma_down=np.float32(gamma_down))
