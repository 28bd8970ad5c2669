"""Run code under N simulated CPU devices, in a fresh process.

``XLA_FLAGS=--xla_force_host_platform_device_count=N`` only takes effect if it
is set before JAX initialises its CPU backend, and the pytest process already
has one device; so the 8-device measurements live in
``tests/multidevice/eight_devices.py`` (a script, not collected by pytest),
which :func:`run_checks` runs once in a subprocess with the flag set, and the
default-suite tests in ``tests/test_eight_devices.py`` assert on its JSON.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import subprocess
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent

# XLA:CPU compilation, not execution, is what these small multi-device programs cost
# (seconds each on 2 cores). These flags only change how XLA:CPU turns the optimised
# HLO into machine code (LLVM -O0 without its expensive passes, the classic elemental
# fusion emitter, one codegen thread): compile time drops about 3x, and the HLO, so
# every collective and its byte count, is unchanged. A run and its reference are
# compiled in the same process under the same flags, so equality checks compare like
# with like.
FAST_COMPILE = (
    "--xla_backend_optimization_level=0",
    "--xla_llvm_disable_expensive_passes=true",
    "--xla_cpu_use_fusion_emitters=false",
    "--xla_cpu_parallel_codegen_split_count=1",
)


def device_env(num_devices: int) -> dict:
    """``os.environ`` with ``num_devices`` simulated CPU devices and :data:`FAST_COMPILE`."""
    env = dict(os.environ)
    ours = {f.split("=")[0] for f in FAST_COMPILE} | {"--xla_force_host_platform_device_count"}
    flags = [f for f in env.get("XLA_FLAGS", "").split() if f.split("=")[0] not in ours]
    env["XLA_FLAGS"] = " ".join(
        flags + list(FAST_COMPILE) + [f"--xla_force_host_platform_device_count={num_devices}"]
    )
    env["JAX_PLATFORMS"] = "cpu"
    return env


def launch_cmd(devices_per_process: int, *command) -> list[str]:
    """``python -m beyondbp.launch`` running ``command`` in 2 processes (240 s limit) as argv."""
    launch = [sys.executable, "-m", "beyondbp.launch", "-n", "2", "--timeout", "240"]
    per_process = ["--devices-per-process", str(devices_per_process)]
    return [*launch, *per_process, "--", *map(str, command)]


@contextlib.contextmanager
def reaped(proc: subprocess.Popen):
    """``proc``, killed and waited for on the way out if it still runs (a failing test leaves
    no process behind)."""
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def run_checks(names: tuple = (), num_devices: int = 8, timeout: float = 600) -> dict:
    """Run ``tests/multidevice/eight_devices.py`` (its default checks, or ``names``).

    Returns its JSON, ``{check: {"ok": bool, "value" | "error": ..., "seconds": float}}``;
    raises AssertionError with the script's output when it crashes or times out.
    """
    with tempfile.TemporaryDirectory() as tmp:
        out = pathlib.Path(tmp) / "results.json"
        cmd = [sys.executable, str(HERE / "multidevice" / "eight_devices.py"), str(out), *names]
        try:
            r = subprocess.run(
                cmd,
                cwd=REPO,
                env=device_env(num_devices),
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired as e:
            raise AssertionError(
                f"eight_devices.py under {num_devices} devices timed out after "
                f"{timeout} s:\n{(e.stdout or '')[-4000:]}"
            ) from None
        if r.returncode != 0 or not out.exists():
            raise AssertionError(
                f"eight_devices.py under {num_devices} devices failed (exit "
                f"{r.returncode}):\n{r.stdout[-8000:]}\n{r.stderr[-4000:]}"
            )
        return json.loads(out.read_text())
