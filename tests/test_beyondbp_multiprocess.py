"""Several processes: ``python -m beyondbp.launch`` on 127.0.0.1, and its supervision."""

import io
import subprocess
import sys
import time

import numpy as np
import pytest
from _multidevice import HERE, REPO, device_env, launch_cmd

from beyondbp import launch

SCRIPT = HERE / "multidevice" / "mp_sharded_fwdgrad.py"


def test_two_processes_equal_one_process(tmp_path):
    """2 processes x 1 CPU device (gloo over loopback) == 1 process x 2 simulated devices, bit for bit."""
    mp, sp = tmp_path / "mp.npz", tmp_path / "sp.npz"
    cmd = launch_cmd(1, sys.executable, SCRIPT, mp, 3)
    r = subprocess.run(
        cmd, cwd=REPO, env=device_env(1), capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-3000:]
    assert "[0] process 0 of 2: done" in r.stdout and "[1] process 1 of 2: done" in r.stdout
    r = subprocess.run(
        [sys.executable, str(SCRIPT), str(sp), "3"],
        cwd=REPO,
        env=device_env(2),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-3000:]
    a, b = np.load(mp), np.load(sp)
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_a_failing_process_stops_the_others():
    code = (
        "import os, sys, time\n"
        "if os.environ['BEYONDBP_PROCESS_ID'] == '1': sys.exit(3)\n"
        "time.sleep(60)\n"
    )
    out = io.StringIO()
    t = time.monotonic()
    assert launch.launch(_python(code), 3, grace=2.0, stdout=out) == 3
    assert time.monotonic() - t < 30


def test_timeout_stops_everything():
    out = io.StringIO()
    t = time.monotonic()
    assert (
        launch.launch(_python("import time; time.sleep(60)"), 2, timeout=1.0, grace=1.0, stdout=out)
        == launch.TIMEOUT_EXIT
    )
    assert time.monotonic() - t < 30
    assert "timeout" in out.getvalue()


def test_environment_and_prefixed_output():
    code = (
        "import os; print(os.environ['BEYONDBP_PROCESS_ID'], "
        "os.environ['BEYONDBP_NUM_PROCESSES'], os.environ['BEYONDBP_COORDINATOR_ADDRESS'])"
    )
    out = io.StringIO()
    assert launch.launch(_python(code), 2, stdout=out) == 0
    lines = sorted(out.getvalue().splitlines())
    assert lines[0].startswith("[0] 0 2 127.0.0.1:") and lines[1].startswith("[1] 1 2 127.0.0.1:")
    assert lines[0].split()[-1] == lines[1].split()[-1]  # one coordinator for all


@pytest.mark.parametrize("args", [[], ["-n", "2"], ["-n", "0", "--", "true"]])
def test_cli_rejects_bad_usage(args):
    with pytest.raises(SystemExit) as e:
        launch.main(args)
    assert e.value.code == 2


def test_initialize_needs_all_or_none_of_the_addresses(monkeypatch):
    from beyondbp import distributed as dist

    for var in (dist.ENV_COORDINATOR, dist.ENV_NUM_PROCESSES, dist.ENV_PROCESS_ID):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ValueError, match="all of"):
        dist.initialize(coordinator_address="127.0.0.1:1234")
    with pytest.raises(ValueError, match="process_id"):
        dist.initialize("127.0.0.1:1234", 2, 5)
