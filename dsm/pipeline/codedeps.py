"""Code dependencies of a pipeline stage, computed from the imports (never written by hand).

A stage's code dependencies are the files of every ``dsm`` module its entry module
imports, transitively: ``import dsm.x``, ``from dsm.x import y`` (``y`` a module or a
name), at module level or inside functions, plus the ``__init__.py`` of every package on
the way (Python executes them). The analysis is static (``ast``), so it sees imports
that run only on some code paths too: a superset of what one run executes, never less.

Not followed: the CLI (``dsm/cli.py``, argument parsing only) and the parameter loader
(``dsm/config.py``): they hand each stage its parameters, which are dependencies of
their own (the stage's ``reads``). Both tools get the same list from
:func:`code_files` (Snakemake as rule inputs, DVC as ``deps:`` in the generated
dvc.yaml).
"""

from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path

PACKAGE = "dsm"


def module_file(root: Path, module: str) -> Path | None:
    """The file of ``module`` (``dsm.a.b``) under ``root``: ``dsm/a/b.py`` or
    ``dsm/a/b/__init__.py``; None if it is not a module of the package."""
    parts = module.split(".")
    if parts[0] != PACKAGE:
        return None
    base = Path(root, *parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _packages_of(module: str) -> list[str]:
    """``dsm.a.b`` -> [``dsm``, ``dsm.a``]: packages whose __init__ runs on import."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def imported_modules(root: Path, module: str) -> set[str]:
    """The ``dsm`` modules ``module`` imports directly (anywhere in its file)."""
    path = module_file(root, module)
    if path is None:
        return set()
    tree = ast.parse(path.read_text(), filename=str(path))
    is_pkg = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:   # relative import: resolve against this module's package
                pkg = module.split(".") if is_pkg else module.split(".")[:-1]
                pkg = pkg[: len(pkg) - (node.level - 1)]
                base = ".".join(pkg + ([base] if base else []))
            found.add(base)
            # `from dsm.data import field`: field may be a submodule
            found |= {f"{base}.{alias.name}" for alias in node.names
                      if module_file(root, f"{base}.{alias.name}") is not None}
    return {m for m in found if module_file(root, m) is not None}


@lru_cache(maxsize=None)
def _closure(root: str, entry: str, skip: frozenset) -> tuple[str, ...]:
    todo, seen = [entry], set()
    while todo:
        module = todo.pop()
        if module in seen or module in skip:
            continue
        seen.add(module)
        todo += _packages_of(module)
        todo += sorted(imported_modules(Path(root), module))
    return tuple(sorted(seen))


def import_closure(entry: str, root=".", skip=()) -> list[str]:
    """Every ``dsm`` module ``entry`` imports, transitively, itself included (sorted).

    ``skip``: modules not to follow (a test truncates the closure with it).
    """
    return list(_closure(str(Path(root).resolve()), entry, frozenset(skip)))


def code_files(entry: str, root=".", skip=()) -> list[str]:
    """The files of :func:`import_closure`, relative to ``root`` (POSIX paths, sorted)."""
    root = Path(root).resolve()
    files = {module_file(root, m).relative_to(root).as_posix()
             for m in import_closure(entry, root, skip)}
    return sorted(files)
