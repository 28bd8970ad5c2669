"""A griffe extension: read the toolkit's docstrings the way its authors wrote them.

The library documents module constants with Sphinx's ``#:`` comment convention and refers to
names with Sphinx roles (:func:`x`, :class:`~pkg.X`). griffe reads neither, so this extension

* turns the ``#:`` comment block right above an attribute into the attribute's docstring, and
* turns each role into an optional autorefs cross-reference (a link where the target is on an
  API page, plain code where it is not, e.g. a private helper), and an RST literal-block marker
  ``::`` into a colon.

It is used both by the docs build (``mkdocs.yml``) and by ``tests/test_docs.py``, so the test
sees exactly the docstrings the site shows.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import griffe

_ROLE = re.compile(r":(?:func|class|data|meth|mod|attr|exc|obj):`(~?)([^`]+)`")
_LITERAL = re.compile(r"(\S) ?::$", re.MULTILINE)


def comment_docstring(lines: list[str], lineno: int) -> str | None:
    """The ``#:`` comment block ending on the line above ``lineno`` (1-based), or None."""
    block: list[str] = []
    i = lineno - 2
    while i >= 0 and lines[i].lstrip().startswith("#:"):
        block.append(lines[i].lstrip()[2:].strip())
        i -= 1
    return "\n".join(reversed(block)) if block else None


def _target(obj: griffe.Object, name: str) -> str | None:
    """The full path ``name`` stands for in ``obj``'s scope, or None when it cannot be found."""
    name = name.lstrip(".")
    if name.endswith("()"):
        name = name[:-2]
    try:
        return obj.resolve(name)
    except Exception:  # griffe raises NameResolutionError and others for unknown names
        pass
    first, _, rest = name.partition(".")
    try:
        base = obj.resolve(first)
    except Exception:
        return name if "." in name else None
    return f"{base}.{rest}" if rest else base


def convert_roles(obj: griffe.Object, text: str) -> str:
    """Sphinx roles in ``text`` as optional autorefs; ``::`` literal markers as colons."""

    def repl(m: re.Match[str]) -> str:
        tilde, name = m.groups()
        shown = name.split(".")[-1] if tilde else name
        target = _target(obj, name)
        if target is None:
            return f"`{shown}`"
        return f'<autoref identifier="{target}" optional><code>{shown}</code></autoref>'

    return _LITERAL.sub(r"\1:", _ROLE.sub(repl, text))


class SphinxComments(griffe.Extension):
    """``#:`` comments as attribute docstrings; Sphinx roles as cross-references."""

    def on_attribute_instance(
        self, *, node: ast.AST | griffe.ObjectNode, attr: griffe.Attribute, **kwargs: Any
    ) -> None:
        path = attr.filepath
        if attr.docstring is not None or attr.lineno is None or not isinstance(path, Path):
            return  # documented already, or no single source file (a namespace package)
        try:
            lines = attr.lines_collection[path]
        except KeyError:  # an object griffe built without source (inspected, not visited)
            return
        text = comment_docstring(lines, attr.lineno)
        if text:
            attr.docstring = griffe.Docstring(text, lineno=attr.lineno - 1, parent=attr)

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        seen: set[str] = set()
        stack: list[griffe.Object] = [pkg]
        while stack:
            obj = stack.pop()
            if obj.path in seen:
                continue
            seen.add(obj.path)
            if obj.docstring is not None:
                obj.docstring.value = convert_roles(obj, obj.docstring.value)
            stack.extend(m for m in obj.members.values() if isinstance(m, griffe.Object))


PACKAGES = ("bbcore", "fwdgrad", "lowbit", "analog", "beyondbp")


def load(root: str, packages: tuple[str, ...] = PACKAGES) -> dict[str, griffe.Module]:
    """The packages under ``root`` as griffe reads them (statically, with this extension)."""
    loader = griffe.GriffeLoader(
        search_paths=[root], extensions=griffe.load_extensions(SphinxComments)
    )
    pkgs = {name: loader.load(name) for name in packages}
    loader.resolve_aliases(implicit=False, external=None)
    return pkgs  # type: ignore[return-value]


def _target_of(obj: griffe.Object | griffe.Alias) -> griffe.Object:
    return obj.final_target if isinstance(obj, griffe.Alias) else obj


def public_names(module: griffe.Module, prefix: str, depth: int = 0) -> list[tuple[str, int, str]]:
    """``(path, depth, kind)`` for every public name under ``module``, in ``__all__`` order.

    A name in ``__all__`` that is a module is listed, then its own public names one level
    deeper. A module without ``__all__`` (the ``beyondbp.methods.*_rows`` recipe modules)
    contributes the functions and classes it defines. ``kind`` is griffe's kind (``module``,
    ``class``, ``function``, ``attribute``); ``path`` is the public path, e.g.
    ``lowbit.recipes.SUN2020``, which is also the anchor the API page gives it.
    """
    out: list[tuple[str, int, str]] = []
    exports = module.exports
    if exports is None:
        names = [
            n
            for n, m in module.members.items()
            if not n.startswith("_") and not m.is_alias and (m.is_function or m.is_class)
        ]
    else:
        names = [e if isinstance(e, str) else e.name for e in exports]
    for name in names:
        if name not in module.members:
            raise ValueError(f"{prefix}.__all__ lists {name!r}, which it does not define")
        try:
            target = _target_of(module.members[name])
        except griffe.AliasResolutionError as e:
            raise ValueError(f"{prefix}.{name} cannot be documented: {e}") from None
        out.append((f"{prefix}.{name}", depth, target.kind.value))
        if target.is_module:
            out += public_names(target, f"{prefix}.{name}", depth + 1)  # type: ignore[arg-type]
    return out


def extra_modules(pkg: griffe.Module) -> list[str]:
    """Public submodules of ``pkg`` that its ``__all__`` leaves out (beyondbp's checkpoint, cli, ...)."""
    listed = {e if isinstance(e, str) else e.name for e in (pkg.exports or [])}
    return sorted(
        n
        for n, m in pkg.members.items()
        if m.is_module and not m.is_alias and not n.startswith("_") and n not in listed
    )


def all_public(pkgs: dict[str, griffe.Module]) -> dict[str, list[tuple[str, int, str]]]:
    """Per package: its public names, then those of its public modules outside ``__all__``."""
    result = {}
    for name, pkg in pkgs.items():
        names = public_names(pkg, name)
        for sub in extra_modules(pkg):
            names.append((f"{name}.{sub}", 0, "module"))
            names += public_names(pkg.members[sub], f"{name}.{sub}", 1)  # type: ignore[arg-type]
        result[name] = names
    return result


def undocumented(pkgs: dict[str, griffe.Module]) -> list[str]:
    """Public names whose docstring has no line of description (the check tests/test_docs.py runs)."""
    missing = []
    for name, names in all_public(pkgs).items():
        for path, _, _ in names:
            obj = _target_of(pkgs[name][path.split(".", 1)[1]])
            doc = obj.docstring.value.strip() if obj.docstring else ""
            if not doc or not doc.splitlines()[0].strip():
                missing.append(f"{path} ({obj.kind.value} {obj.path}, line {obj.lineno})")
    return missing
