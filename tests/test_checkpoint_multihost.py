"""Checkpoints of state sharded across two processes: killed mid-run, resumed bit-identical.

``python -m beyondbp.launch -n 2 --devices-per-process 2`` runs
``tests/multidevice/mp_checkpoint.py``: ``jax.distributed`` on 127.0.0.1 (CPU collectives over
gloo), a mesh of 4 devices over the 2 processes, state sharded over it (no process holds the
first layer's weights, their momentum or the batch of ``rbg`` keys whole), a 4-bit packed copy
of the weights and a step counter. Each process writes its own shards of every checkpoint
(orbax, through ``beyondbp.checkpoint``). One run is killed with SIGKILL, both processes at
once, in the middle of writing its third checkpoint; started again, it resumes from the
second (the partial third is ignored, then removed) and must end with every array of params
and state bit-identical to an uninterrupted run. Its last checkpoint, restored by the test's own process onto one device,
is that final state too.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from _multidevice import HERE, REPO, device_env, launch_cmd, reaped

from beyondbp import checkpoint

SCRIPT = HERE / "multidevice" / "mp_checkpoint.py"
TMP = ".orbax-checkpoint-tmp"  # orbax's temporary directories: ckpt_<step>.orbax-checkpoint-tmp-*
STEPS, EVERY = 40, 5


def _cmd(ck, out, *extra) -> list[str]:
    return launch_cmd(2, sys.executable, SCRIPT, ck, out, STEPS, EVERY, *extra)


def _run(ck, out) -> str:
    r = subprocess.run(
        _cmd(ck, out), cwd=REPO, env=device_env(2), capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-3000:]
    assert "[0] process 0: done" in r.stdout and "[1] process 1: done" in r.stdout
    return r.stdout


def _step(path) -> int:
    return int(path.name.split("_")[1].split(".")[0])


def _kill_mid_save(tmp_path, ck, out) -> tuple[int, bool]:
    """Start the run and SIGKILL both processes while they write their third checkpoint (once
    orbax's temporary directory for it exists). Returns the step the run will resume from and
    whether the kill left that checkpoint unfinished (it almost always does: a save takes
    tens of milliseconds, the directory is polled every 5)."""
    pids, log = tmp_path / "pids", tmp_path / "killed.log"
    pids.mkdir()
    third = f"ckpt_{3 * EVERY:09d}"
    with open(log, "w") as f:
        proc = subprocess.Popen(
            _cmd(ck, out, pids), cwd=REPO, env=device_env(2), stdout=f, stderr=subprocess.STDOUT
        )
        with reaped(proc):
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline:
                if len(list(pids.iterdir())) == 2 and any(ck.glob(f"{third}*")):
                    break
                if proc.poll() is not None:
                    pytest.fail(f"the run ended before it was killed:\n{log.read_text()[-6000:]}")
                time.sleep(0.005)
            # Both at once, in the middle of writing their shards. Stop both first: killed one
            # after the other, a loaded machine can run the survivor between the two kills,
            # and it would see its peer gone (the launcher's SIGTERM, a failed collective)
            # and remove its partial save as a normal error does, leaving nothing to test.
            victims = [int(p.read_text()) for p in pids.iterdir()]
            for sig in (signal.SIGSTOP, signal.SIGKILL):
                for pid in victims:
                    os.kill(pid, sig)
            proc.wait(timeout=60)
    assert proc.returncode != 0, "the run finished before the kill: nothing was tested"
    assert not out.exists(), "a killed run must not have written its final state"
    unfinished = not (ck / third).exists()
    stopped = _step(checkpoint.latest(ck))
    assert stopped == (2 if unfinished else 3) * EVERY
    if unfinished:  # the partial save is there, and latest() looks past it
        assert any(TMP in p.name for p in ck.iterdir())
    return stopped, unfinished


def _restore_in_one_process(ck, final):
    """The last checkpoint of the 2-process run, read by this one process (1 CPU device, the
    same code's restore target on a 1-device mesh), is the run's final state, bit for bit;
    every shard's checksum is checked, process 1's too."""
    import json

    import jax

    sys.path.insert(0, str(HERE / "multidevice"))
    try:
        import mp_checkpoint
    finally:
        sys.path.remove(str(HERE / "multidevice"))
    last = checkpoint.latest(ck)
    assert _step(last) == STEPS
    target = mp_checkpoint._init(jax.make_mesh((1,), ("x",)))
    with jax.numpy_dtype_promotion("strict"):
        _, restored = checkpoint.restore(last, target)
        got = mp_checkpoint._flat(restored)
    assert sorted(got) == sorted(final)
    for k in got:
        assert got[k].dtype == final[k].dtype and got[k].tobytes() == final[k].tobytes(), k
    sums = last / "checksums.process_1.json"
    rows = json.loads(sums.read_text())
    name = next(k for k, v in rows.items() if v)  # an array process 1 wrote a shard of
    rows[name][0][1] ^= 1
    sums.write_text(json.dumps(rows))
    with pytest.raises(checkpoint.CheckpointError, match="do not match the checksum"):
        checkpoint.restore(last, target)


def test_two_processes_killed_mid_run_resume_bit_identical(tmp_path):
    t0 = time.monotonic()
    _run(tmp_path / "ref_ck", tmp_path / "ref.npz")
    t1 = time.monotonic()
    ck, out = tmp_path / "ck", tmp_path / "out.npz"
    stopped, unfinished = _kill_mid_save(tmp_path, ck, out)
    shards = sorted(p.name for p in checkpoint.latest(ck).iterdir() if p.name.startswith("ocdbt"))
    assert shards == ["ocdbt.process_0", "ocdbt.process_1"], "each process writes its shards"
    sums = sorted(p.name for p in checkpoint.latest(ck).glob("checksums.process_*.json"))
    assert sums == ["checksums.process_0.json", "checksums.process_1.json"]
    t2 = time.monotonic()
    log = _run(ck, out)
    assert f"[0] process 0: starting at step {stopped}" in log
    assert f"[1] process 1: starting at step {stopped}" in log
    t3 = time.monotonic()
    assert not any(TMP in p.name for p in ck.iterdir()), "the resumed run tidies the partial save"
    a, b = np.load(tmp_path / "ref.npz"), np.load(out)
    assert sorted(a) == sorted(b) and len(a) >= 8
    for k in a:  # every array of params and state, bit for bit (key data, 4-bit codes too)
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert a[k].tobytes() == b[k].tobytes(), k
    _restore_in_one_process(ck, b)
    print(
        f"uninterrupted {t1 - t0:.1f} s; killed after {t2 - t1:.1f} s "
        f"({'during' if unfinished else 'just after'} the save of step {3 * EVERY}); "
        f"resumed from step {stopped} in {t3 - t2:.1f} s"
    )
