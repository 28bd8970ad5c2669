"""Run a test module under N simulated CPU devices, in a fresh process.

``XLA_FLAGS=--xla_force_host_platform_device_count=N`` only takes effect if it
is set before JAX initialises its CPU backend, and the pytest process already
has one device; so the multi-device tests live in ``tests/multidevice/``
(names that the default collection does not pick up) and a default-suite test
runs each module with ``python -m pytest`` in a subprocess with the flag set.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent


def device_env(num_devices: int) -> dict:
    env = dict(os.environ)
    flags = [f for f in env.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count")]
    env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={num_devices}"])
    env["JAX_PLATFORMS"] = "cpu"
    return env


def run_module(name: str, num_devices: int = 8, timeout: float = 600, extra: tuple = ()) -> None:
    """Run ``tests/multidevice/<name>`` with pytest under ``num_devices`` devices; fail with its output."""
    path = HERE / "multidevice" / name
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
           "-o", "addopts=", "-m", "not slow", str(path), *extra]
    try:
        r = subprocess.run(cmd, cwd=REPO, env=device_env(num_devices), capture_output=True,
                           text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"{name} under {num_devices} devices timed out after {timeout} s:\n"
                             f"{(e.stdout or '')[-4000:]}") from None
    if r.returncode != 0:
        raise AssertionError(f"{name} under {num_devices} devices failed (exit {r.returncode}):\n"
                             f"{r.stdout[-8000:]}\n{r.stderr[-4000:]}")
