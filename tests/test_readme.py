"""The README's quickstart runs exactly as written."""

from __future__ import annotations

import pathlib
import re

import jax
import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_starts_with_the_two_setup_commands():
    text = README.read_text()
    first = re.search(r"```bash\n(.*?)```", text, flags=re.S).group(1).strip().splitlines()
    assert [line.split("#")[0].strip() for line in first] == ["make run", "make test"]
    assert text.index("```bash") < 40  # right after the title


@pytest.mark.standard_promotion  # user code: runs with JAX's default promotion rules
def test_quickstart_runs_as_written():
    (code,) = _blocks()[:1]
    assert len(code.strip().splitlines()) <= 20
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
    params = namespace["params"]
    assert all(bool(jax.numpy.all(jax.numpy.isfinite(p))) for p in jax.tree.leaves(params))


@pytest.mark.standard_promotion
def test_device_training_chain_runs_as_written():
    """The second block continues the quickstart's namespace (x, y, models, ...)."""
    first, second = _blocks()[:2]
    namespace: dict = {}
    exec(compile(first, str(README), "exec"), namespace)
    before = namespace["params"]
    exec(compile(second, str(README), "exec"), namespace)
    params, state = namespace["params"], namespace["state"]
    assert jax.tree.structure(params) != jax.tree.structure(before)  # the LocalMLP's params
    assert all(bool(jax.numpy.all(jax.numpy.isfinite(p))) for p in jax.tree.leaves(params))
    assert int(state[0].count) == 1 and int(state[-1].nonfinite) == 0
