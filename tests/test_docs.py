"""The documentation site builds strict, and every public name has a documented reference entry.

The build (``mkdocs build --strict``, what ``make docs`` runs) fails on any warning: a broken
link or cross-reference, a docstring griffe cannot parse, a missing README section, a missing
benchmark figure. The public names are read statically by griffe through the same extension the
site uses (``docs/_griffe_ext.py``), so a name counts as documented exactly when the site shows
a description for it.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytest.importorskip("mkdocs", reason="the docs extra is not installed (make test installs it)")
griffe = pytest.importorskip("griffe", reason="mkdocstrings[python] is not installed")


def _public():
    spec = importlib.util.spec_from_file_location("_griffe_ext", ROOT / "docs" / "_griffe_ext.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_public_name_has_a_description():
    public = _public()
    pkgs = public.load(str(ROOT))
    names = public.all_public(pkgs)
    assert set(names) == {"bbcore", "fwdgrad", "lowbit", "analog", "beyondbp"}
    # the walk reaches submodule names and the constants documented by #: comments
    flat = {path for entries in names.values() for path, _, _ in entries}
    for path in ("lowbit.recipes.SUN2020", "analog.presets.TAOX_RERAM", "bbcore.PRNG_IMPL"):
        assert path in flat
    missing = public.undocumented(pkgs)
    assert not missing, "public names without a line of description:\n" + "\n".join(missing)


def test_comment_docstrings_and_roles():
    public = _public()
    lines = ["x = 1", "#: first line", "#: second line", "Y = 2"]
    assert public.comment_docstring(lines, 4) == "first line\nsecond line"
    assert public.comment_docstring(lines, 2) is None  # a plain statement above: no docstring
    mod = griffe.Module("pkg")
    text = public.convert_roles(mod, "See :func:`~pkg.sub.f` and :class:`Missing`. Example::")
    assert '<autoref identifier="pkg.sub.f" optional><code>f</code></autoref>' in text
    assert "`Missing`" in text and text.endswith("Example:")


def test_undocumented_names_are_found(tmp_path):
    pkg = tmp_path / "toy"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        '''"""A toy package."""

__all__ = ["f", "g", "X", "Y"]


def f():
    pass


def g():
    """Does g."""


#: The X constant.
X = 1
Y = 2
'''
    )
    public = _public()
    missing = public.undocumented(public.load(str(tmp_path), ("toy",)))
    assert [m.split()[0] for m in missing] == ["toy.f", "toy.Y"]


def _build(out: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},  # the theme's banner; mkdocs<2 is pinned
        capture_output=True,
        text=True,
        timeout=600,
    )
    warnings = [ln for ln in proc.stderr.splitlines() if re.match(r"(WARNING|ERROR)\b", ln)]
    assert proc.returncode == 0, "mkdocs build --strict failed:\n" + (
        "\n".join(warnings) or proc.stderr[-4000:]
    )


# One test for everything the built site must hold: the build is the expensive part (about
# 15 s of CPU), and xdist would run a shared fixture once per worker.
def test_site_builds_strict_and_holds_every_page_and_name(tmp_path):
    site = tmp_path / "site"
    _build(site)

    packages = ("bbcore", "fwdgrad", "lowbit", "analog", "beyondbp")
    for page in (
        "index.html",
        "getting-started/index.html",
        "benchmarks/index.html",
        "architecture/index.html",
        *(f"packages/{p}/index.html" for p in packages),
        *(f"notebooks/{n}/index.html" for n in ("fwdgrad", "lowbit", "analog", "compare")),
    ):
        assert (site / page).is_file(), page
    start = (site / "getting-started/index.html").read_text(encoding="utf-8")
    assert "make test" in start and "forward_gradient" in start  # README commands + quickstart
    bench = (site / "benchmarks/index.html").read_text(encoding="utf-8")
    assert "<img" in bench  # the figures were copied and linked

    # every public name has its entry (its anchor) on its package's API page
    public = _public()
    for package, entries in public.all_public(public.load(str(ROOT))).items():
        html = (site / "api" / package / "index.html").read_text(encoding="utf-8")
        absent = [path for path, _, _ in entries if f'id="{path}"' not in html]
        assert not absent, f"api/{package}: no entry for {absent}"

    # equations were converted to MathML at build time: no MathJax, no network
    for page in ("packages/fwdgrad", "packages/lowbit", "packages/analog", "notebooks/fwdgrad"):
        html = (site / page / "index.html").read_text(encoding="utf-8")
        assert "<math" in html, page
        assert 'class="arithmatex"' not in html and '<script src="">' not in html, page
