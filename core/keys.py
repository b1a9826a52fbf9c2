"""Stage keys: a short hash of everything that determines a stage's output.

Keys hash validated configs, dataset fingerprints (md5-derived) and upstream keys, never
tensors or pickles (their bytes are not stable across processes)."""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
import inspect
import json
import sys
from pathlib import Path
from typing import Any

# Bump a stage's version when its code changes what it computes: old artifacts stop matching.
STAGE_VERSIONS = {"pretrain": 1, "freeze": 1, "probe": 2, "features": 1, "supervised": 1}


def stage_key(stage: str, payload: dict[str, Any]) -> str:
    blob = json.dumps(
        {"stage": stage, "stage_version": STAGE_VERSIONS.get(stage, 1), **payload},
        sort_keys=True,
        default=str,
        separators=(",", ":"),
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def code_digest(*objects: Any) -> str:
    """The code version of a stage: a hash of the source files of ``objects`` (modules, classes or
    functions) and of every module they import, transitively (``import_closure``). Computed from
    the import graph, never listed by hand: a module split off from a stage's code is covered as
    soon as the stage imports it, and editing a module the stage does not import (a README,
    another stage's code) leaves its key alone."""
    files: set[str] = set()
    for obj in objects:
        module = obj if inspect.ismodule(obj) else sys.modules.get(getattr(obj, "__module__", ""), None)
        name = getattr(module, "__name__", None)
        path = getattr(module, "__file__", None)
        if name and path:
            files |= import_closure(name, path)
    h = hashlib.sha256()
    for path in sorted(files):
        h.update(_relative(path).encode() + b"\0" + hashlib.sha256(read_source(path)).digest())
    return h.hexdigest()[:16]


def read_source(path: str) -> bytes:
    """A source file's bytes (one place, so a test can stand in an edited file)."""
    with open(path, "rb") as f:
        return f.read()


def _relative(path: str) -> str:
    # the file's name inside its package tree, not where it is installed: keys agree across machines
    parts = Path(path).parts
    return "/".join(parts[-3:])


def import_closure(module: str, path: str) -> frozenset[str]:
    """Source files of ``module`` and of every module of its own top-level package, or of
    ``pretextflow``, that it imports (module-level and function-level imports alike, and the
    ``__init__.py`` of each package on the way), transitively. Read from the source with ``ast``:
    nothing is imported.

    A package passed through on the way to a submodule (``pretextflow`` for ``pretextflow.core.x``)
    runs only its module-level code, so only its module-level imports are followed: the public
    API's lazy functions in ``pretextflow/__init__.py`` do not pull the whole project into every
    stage. Imported directly, a module's function-level imports count too."""
    roots = {module.partition(".")[0], "pretextflow"}
    files: dict[str, str | None] = {}  # module name -> its file, for this call only
    seen: dict[str, tuple[str, bool]] = {}  # module name -> (file, whether all its imports were followed)
    todo = [(module, path, True)]
    while todo:
        name, file, full = todo.pop()
        if name in seen and (seen[name][1] or not full):
            continue
        seen[name] = (file, full)
        for dep in _imported_names(name, file, full):
            if dep.partition(".")[0] not in roots:
                continue
            found = [(c, f) for c in _with_parents(dep) if (f := _module_file(c, files))]
            for i, (candidate, candidate_file) in enumerate(found):
                todo.append((candidate, candidate_file, i == len(found) - 1))  # the last: imported itself
    return frozenset(file for file, _ in seen.values())


def _imported_names(module: str, path: str, full: bool = True) -> set[str]:
    """Every dotted name an ``import`` or ``from ... import`` in the file may refer to (with
    ``full`` false, only those that run when the module is imported: not inside functions)."""
    return _names_in(module, path, read_source(path), full)


# Nothing about which files a closure holds is cached across calls: it is recomputed from the
# file system each time, so no state of the process (an import hook, a half-imported package in
# another thread) can leave a stale answer that makes two processes disagree on a key. Only the
# parse of a file's exact bytes is cached.
@functools.lru_cache(maxsize=4096)
def _names_in(module: str, path: str, source: bytes, full: bool = True) -> frozenset[str]:
    tree = ast.parse(source, filename=path)
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree) if full else _module_level(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            out.add(base)
            out.update(f"{base}.{alias.name}" for alias in node.names)  # names that are submodules
    return frozenset(out)


def _module_level(tree: ast.AST):
    """The nodes that run on import: everything but the bodies of functions and lambdas."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                todo.append(child)


def _with_parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def _module_file(name: str, files: dict[str, str | None]) -> str | None:
    """The source file of module ``name`` without importing it (None for a name that is not a
    module: a function or class imported from one). ``files`` memoises answers within one closure."""
    if name not in files:
        files[name] = _find_module_file(name, files)
    return files[name]


def _find_module_file(name: str, files: dict[str, str | None]) -> str | None:
    package, _, leaf = name.rpartition(".")
    if not package:
        spec = importlib.util.find_spec(leaf)
        return spec.origin if spec is not None and spec.origin and spec.origin.endswith(".py") else None
    parent = _module_file(package, files)
    if parent is None or not parent.endswith("__init__.py"):
        return None
    folder = Path(parent).parent
    for candidate in (folder / f"{leaf}.py", folder / leaf / "__init__.py"):
        if candidate.is_file():
            return str(candidate)
    try:  # a sub-package mapped elsewhere (setuptools package-dir): ask the import system
        spec = importlib.util.find_spec(name)  # imports only the parent package, already a package
    except (ImportError, ValueError):
        return None
    return spec.origin if spec is not None and spec.origin and spec.origin.endswith(".py") else None
