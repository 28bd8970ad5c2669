"""MkDocs hooks: pull the README, notebooks and benchmark figures in; render math offline.

* ``on_files`` writes one API page per package (``api/<package>.md``): every public name
  (``__all__``, walked by ``docs/_griffe_ext.py``) as a mkdocstrings entry, in ``__all__`` order,
  so a name added to a package is on its page at the next build, and ``tests/test_docs.py`` fails
  if it has no docstring. It also adds ``notebooks/*.ipynb`` (rendered by mkdocs-jupyter from
  their stored outputs, never executed) and the files BENCHMARKS.md links to (its figures),
  from the repository root, so neither is copied into ``docs/``.
* ``on_page_markdown`` replaces ``<!-- readme: SECTION -->`` with that ``## SECTION`` of
  README.md (``top`` is the part above the first ``##``): the getting-started page shows the
  README's commands and quickstart verbatim, and ``tests/test_readme.py`` runs those.
* ``on_page_content`` converts the TeX that ``pymdownx.arithmatex`` marks, and the ``$...$`` of
  the notebooks' markdown cells, into MathML with ``latex2mathml``: browsers render MathML
  natively, so no MathJax script is loaded.
"""

from __future__ import annotations

import html
import importlib.util
import re
from pathlib import Path
from typing import Any

from latex2mathml.converter import convert as tex_to_mathml
from mkdocs.plugins import event_priority
from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location(
    "_griffe_ext", Path(__file__).parent / "_griffe_ext.py"
)
assert _spec is not None and _spec.loader is not None
public = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(public)

INTROS = {
    "bbcore": "The policy every package shares, defined once: non-finite refusal, argument "
    "checks, the PRNG, JAX-version shims and pytree search.",
    "fwdgrad": "Forward gradients with `jax.jvp`: estimators, optax transforms, activity "
    "perturbation with local losses, diagnostics, the sharded form and flax nnx models.",
    "lowbit": "4-bit training: number formats as data, exact quantizers and 4-bit packing, "
    "scaling rules, quantized `dot_general` and `conv_general_dilated`, the optax transform, "
    "block-scaled formats (MXFP4, NVFP4), per-layer rules and published recipes.",
    "analog": "Memristor crossbars: device models and presets, IO periphery, tiles, "
    "matrix-vector products, pulsed updates, the activity-difference local rule (equilibrium "
    "propagation), the `program` transform, energy ledgers and sharding.",
    "beyondbp": "The glue a user runs: data sets, reference models, the method registry behind "
    "`beyondbp compare`, the training loop, checkpoints, the command line, multi-device and "
    "multi-process helpers. Its `__all__` names the submodules; each is listed with its own "
    "public names, followed by the public submodules `__all__` leaves out.",
}
NOTEBOOKS = ("fwdgrad", "lowbit", "analog", "compare")
_README_MARK = re.compile(r"<!-- readme: ([^>]+?) -->")
_MATH = re.compile(r'<(span|div) class="arithmatex">\\[(\[](.*?)\\[)\]]</\1>', re.DOTALL)


def readme_section(title: str) -> str:
    """The body of README.md's ``## title`` section (``top``: the text above the first ``##``)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    parts = re.split(r"^## (.+)$", text, flags=re.MULTILINE)
    if title == "top":
        return parts[0].split("\n", 1)[1].strip()  # drop the "# title" line
    for head, body in zip(parts[1::2], parts[2::2]):
        if head.strip() == title:
            return body.strip()
    raise ValueError(f"README.md has no '## {title}' section (docs <!-- readme: {title} -->)")


def api_page(package: str, names: list[tuple[str, int, str]]) -> str:
    """The markdown of ``api/<package>.md``: the package docstring, then every public name."""
    out = [
        f"::: {package}\n    options:\n      heading_level: 1\n      members: false\n",
        f"{INTROS[package]} The ideas and equations are on the "
        f"[{package} page](../packages/{package}.md).\n",
    ]
    for path, depth, kind in names:
        opts = [f"      heading_level: {2 + depth}"]
        if kind == "module":
            opts.append("      members: false")
        out.append(f"::: {path}\n    options:\n" + "\n".join(opts) + "\n")
    return "\n".join(out)


def _repo_file(path: str, config: Any) -> File:
    return File(path, str(ROOT), config["site_dir"], config["use_directory_urls"])


# Before mkdocs-jupyter's on_files (default priority 0), which wraps the .ipynb files it sees.
@event_priority(100)
def on_files(files: Files, config: Any) -> Files:
    for package, names in public.all_public(public.load(str(ROOT))).items():
        files.append(File.generated(config, f"api/{package}.md", content=api_page(package, names)))
    for name in NOTEBOOKS:
        files.append(_repo_file(f"notebooks/{name}.ipynb", config))
    bench = (ROOT / "BENCHMARKS.md").read_text(encoding="utf-8")
    for target in sorted(set(re.findall(r"\]\(\s*([^)\s#]+)", bench))):
        # figures and other files BENCHMARKS.md links to, relative to the repository root; a
        # missing one stays a broken link, which fails the strict build
        if "://" not in target and not target.endswith(".md") and (ROOT / target).is_file():
            files.append(_repo_file(target, config))
    return files


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    return _README_MARK.sub(lambda m: readme_section(m.group(1).strip()), markdown)


def _mathml(m: re.Match[str]) -> str:
    tag, tex = m.groups()
    display = "block" if tag == "div" else "inline"
    return tex_to_mathml(html.unescape(tex).strip(), display=display)


# In a rendered notebook: code, outputs, scripts and styles are left alone; the TeX of the
# markdown cells stands between dollar signs, as Jupyter writes it.
_NB_VERBATIM = re.compile(r"(<(pre|code|script|style)\b.*?</\2>)", re.DOTALL)
_NB_MATH = re.compile(r"\$\$(.+?)\$\$|(?<![\\$])\$([^$\n]+?)\$", re.DOTALL)


def _notebook_math(m: re.Match[str]) -> str:
    block, inline = m.groups()
    tex = block if block is not None else inline
    return tex_to_mathml(html.unescape(tex).strip(), display="block" if block else "inline")


def notebook_mathml(html_text: str) -> str:
    """A rendered notebook with its markdown cells' TeX as MathML and no MathJax loader."""
    # nbconvert's template loads MathJax from an empty URL when none is configured
    html_text = html_text.replace('<script src=""> </script>', "")
    parts = _NB_VERBATIM.split(html_text)
    # split() returns text, then the two groups of each verbatim match: (text, whole, tag)*
    out = []
    for i in range(0, len(parts), 3):
        out.append(_NB_MATH.sub(_notebook_math, parts[i]))
        if i + 1 < len(parts):
            out.append(parts[i + 1])
    return "".join(out)


def on_page_content(html_text: str, page: Any, **kwargs: Any) -> str:
    if page.file.src_uri.endswith(".ipynb"):
        return notebook_mathml(html_text)
    return _MATH.sub(_mathml, html_text)
