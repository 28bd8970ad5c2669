"""Start N cooperating JAX processes on this machine: ``python -m beyondbp.launch``.

Usage::

    python -m beyondbp.launch --num-processes 2 [--devices-per-process 1] \\
        [--timeout 600] -- python my_training_script.py --my-args

Each process gets ``$BEYONDBP_COORDINATOR_ADDRESS`` (127.0.0.1 and a free
port), ``$BEYONDBP_NUM_PROCESSES`` and ``$BEYONDBP_PROCESS_ID``; the script calls
:func:`beyondbp.distributed.initialize` before anything else, which hands them
to ``jax.distributed.initialize`` (CPU collectives over gloo, loopback TCP).
After that ``jax.devices()`` lists every process's devices and a mesh over
them spans processes; the same script runs unchanged on a cluster.

On a cluster, start one process per host (or per accelerator) with the
scheduler instead of this launcher (``srun``, ``mpirun``, a Kubernetes job):
:func:`~beyondbp.distributed.initialize` then calls
``jax.distributed.initialize()`` without arguments and JAX reads the
addresses from the scheduler's environment (SLURM, Open MPI, Kubernetes,
Cloud TPU), or from the three variables above if the job script sets them.

Supervision: each process's output is prefixed with ``[rank]``. When any
process exits with an error, the others are terminated (SIGTERM, then SIGKILL
after a grace period), because the survivors would otherwise block forever in
a collective waiting for the dead one; the launcher then exits with that
error's code. ``--timeout`` bounds the whole run (exit code 124, like
``timeout(1)``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

from beyondbp.distributed import ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID

__all__ = ["main", "launch", "free_port"]

TIMEOUT_EXIT = 124


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _pump(stream, prefix: str, out) -> None:
    for line in iter(stream.readline, b""):
        out.write(prefix + line.decode(errors="replace"))
        out.flush()
    stream.close()


def _stop(procs: Sequence[subprocess.Popen], grace: float) -> None:
    """SIGTERM every live process group, then SIGKILL what is left after ``grace`` seconds."""
    for p in procs:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def launch(
    command: Sequence[str],
    num_processes: int,
    *,
    devices_per_process: int | None = None,
    timeout: float | None = None,
    host: str = "127.0.0.1",
    port: int | None = None,
    env: dict | None = None,
    grace: float = 5.0,
    stdout=None,
) -> int:
    """Run ``command`` as ``num_processes`` cooperating processes; return the exit code.

    0 when all succeed; the first failing process's code otherwise (the others
    are stopped); 124 on timeout. ``devices_per_process`` sets
    ``--xla_force_host_platform_device_count`` so each process simulates that
    many CPU devices.
    """
    _check_launch(command, num_processes, devices_per_process)
    out = stdout or sys.stdout
    address = f"{host}:{port or free_port(host)}"
    base = _base_env(env, devices_per_process)
    procs, pumps = [], []
    try:
        for rank in range(num_processes):
            p, t = _start(command, rank, num_processes, address, base, out)
            procs.append(p)
            pumps.append(t)
        code = _wait(procs, timeout, out)
        if code:
            _stop(procs, grace)
        return code
    except BaseException:
        _stop(procs, grace)
        raise
    finally:
        for t in pumps:
            t.join(timeout=grace)


def _check_launch(command, num_processes, devices_per_process) -> None:
    """Validate :func:`launch`'s arguments (errors say what to pass)."""
    if not command:
        raise ValueError("launch: no command given; e.g. launch(['python', 'train.py'], 2)")
    if isinstance(num_processes, bool) or not isinstance(num_processes, int) or num_processes < 1:
        raise ValueError(f"launch: num_processes={num_processes!r}; need an int >= 1")
    if devices_per_process is not None and (
        not isinstance(devices_per_process, int) or devices_per_process < 1
    ):
        raise ValueError(f"launch: devices_per_process={devices_per_process!r}; need an int >= 1")


def _base_env(env: dict | None, devices_per_process: int | None) -> dict:
    """Every rank's environment: ``env`` (default ours), with the simulated CPU device count."""
    base = dict(os.environ if env is None else env)
    if devices_per_process is not None:
        flags = [
            f
            for f in base.get("XLA_FLAGS", "").split()
            if not f.startswith("--xla_force_host_platform_device_count")
        ]
        flags.append(f"--xla_force_host_platform_device_count={devices_per_process}")
        base["XLA_FLAGS"] = " ".join(flags)
    return base


def _start(command, rank: int, num_processes: int, address: str, base: dict, out):
    """Start rank ``rank`` and a thread that copies its output to ``out``, prefixed."""
    penv = dict(base)
    penv.update(
        {
            ENV_COORDINATOR: address,
            ENV_NUM_PROCESSES: str(num_processes),
            ENV_PROCESS_ID: str(rank),
        }
    )
    # Own process group: stopping a rank also stops whatever it spawned.
    p = subprocess.Popen(
        list(command),
        env=penv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    t = threading.Thread(target=_pump, args=(p.stdout, f"[{rank}] ", out), daemon=True)
    t.start()
    return p, t


def _wait(procs: Sequence[subprocess.Popen], timeout: float | None, out) -> int:
    """Poll until all ranks succeed (0), one fails (its code) or ``timeout`` passes (124)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        codes = [p.poll() for p in procs]
        failed = [c for c in codes if c not in (None, 0)]
        if failed:
            return failed[0]
        if all(c == 0 for c in codes):
            return 0
        if deadline is not None and time.monotonic() > deadline:
            out.write(f"beyondbp.launch: timeout after {timeout:g} s; stopping all processes\n")
            return TIMEOUT_EXIT
        time.sleep(0.05)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m beyondbp.launch -n N -- CMD``: run CMD as N cooperating processes."""
    parser = argparse.ArgumentParser(
        prog="python -m beyondbp.launch",
        description="Start N cooperating JAX processes on this machine (loopback, CPU "
        "collectives). The command must call beyondbp.distributed.initialize().",
    )
    parser.add_argument("-n", "--num-processes", type=int, required=True)
    parser.add_argument(
        "--devices-per-process",
        type=int,
        default=None,
        help="simulated CPU devices per process (sets XLA_FLAGS)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds before every process is stopped (exit code 124)",
    )
    parser.add_argument(
        "--port", type=int, default=None, help="coordinator port (default: a free one)"
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command to run, after --")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to run after --, e.g. -- python train.py")
    if args.num_processes < 1:
        parser.error("--num-processes must be >= 1")
    return launch(
        command,
        args.num_processes,
        devices_per_process=args.devices_per_process,
        timeout=args.timeout,
        port=args.port,
    )


if __name__ == "__main__":
    sys.exit(main())
