"""Source rewriting for `videoadapt export-remote-code`: videoadapt modules as the files of one flat folder.

transformers' remote code copies an `auto_map` module, and the modules it imports as `from .<name> import ...`
(found by a regular expression, recursively), from one folder into its module cache; absolute imports must name
installed packages. Here a videoadapt module becomes one flat file (`videoadapt.layers.rotary` -> `layers_rotary`,
`videoadapt.configuration.configuration_pave` -> `configuration_pave`, `videoadapt.processors.sampling` ->
`processors_sampling`) whose videoadapt imports are single-dot relative imports. Imports that a flat folder cannot
reproduce (`import videoadapt`, imports from a package, dynamic imports of videoadapt) are refused with the file and
line, so that the exported code never needs videoadapt installed.
"""

import ast
import importlib.util
from collections.abc import Iterable
from pathlib import Path


__all__ = ["PACKAGE", "flat_module_name", "module_closure", "rewrite_imports", "scan_imports"]

PACKAGE = "videoadapt"
_BARE_PREFIXES = ("configuration_", "modeling_", "processing_")  # transformers' own file names stay as they are
_DYNAMIC_IMPORTERS = ("import_module", "__import__", "find_spec")


def _is_ours(module: str) -> bool:
    return module == PACKAGE or module.startswith(PACKAGE + ".")


def flat_module_name(module: str) -> str:
    """The flat file stem of a videoadapt module: `videoadapt.layers.rotary` -> `layers_rotary`.

    Modules directly in the package, and files already named like transformers' (`configuration_*`, `modeling_*`,
    `processing_*`), keep their name; others get their folders as a prefix.
    """
    parts = module.split(".")
    if not _is_ours(module) or len(parts) < 2:
        raise ValueError(f"`module` must name a module inside `{PACKAGE}` (e.g. 'videoadapt.layers.rotary'), got "
                         f"{module!r}.")  # fmt: skip
    *folders, name = parts[1:]
    return name if not folders or name.startswith(_BARE_PREFIXES) else "_".join([*folders, name])


def _is_package(module: str) -> bool:
    spec = importlib.util.find_spec(module)
    if spec is None:
        raise ValueError(f"`{module}` is imported but cannot be found; is videoadapt installed completely?")
    return spec.submodule_search_locations is not None


def _module_constants(tree: ast.Module) -> dict[str, str]:
    """Module-level `NAME = "text"` assignments (the arguments dynamic imports are usually given)."""
    constants = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            constants.update({t.id: node.value.value for t in node.targets if isinstance(t, ast.Name)})
    return constants


def _import_nodes(tree: ast.Module, path: str) -> list[tuple[ast.stmt, str]]:
    """Every videoadapt import at any depth, with the module it imports: `from videoadapt.<m> import ...` and
    `import videoadapt.<m> as <name>`. Imports a flat folder cannot reproduce raise ValueError."""
    found, constants = [], _module_constants(tree)
    for node in ast.walk(tree):
        where = f"{path}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import) and any(_is_ours(alias.name) for alias in node.names):
            module = node.names[0].name
            if len(node.names) > 1 or node.names[0].asname is None:
                raise ValueError(f"{where}: `import {module}` binds the name `videoadapt`, which the flat folder "
                                 f"lacks; write `import {module} as <name>` (one per line).")  # fmt: skip
        elif isinstance(node, ast.ImportFrom) and (node.level > 0 or _is_ours(node.module or "")):
            module = node.module
            if node.level > 0:
                raise ValueError(f"{where}: relative imports break when the files are flattened; import from "
                                 "`videoadapt.<module>`.")  # fmt: skip
        else:
            _check_dynamic_import(node, constants, where)
            continue
        if _is_package(module):
            raise ValueError(f"{where}: `{module}` is a package; import from the module that defines the names (the "
                             "flat folder has no packages).")  # fmt: skip
        found.append((node, module))
    return found


def _check_dynamic_import(node: ast.AST, constants: dict[str, str], where: str) -> None:
    """`importlib.import_module("videoadapt...")` (or `__import__`, `find_spec`, also through a module-level
    constant) cannot be followed by remote code: raise ValueError."""
    if not isinstance(node, ast.Call) or not node.args:
        return
    called = getattr(node.func, "attr", getattr(node.func, "id", ""))
    argument = node.args[0]
    target = argument.value if isinstance(argument, ast.Constant) else constants.get(getattr(argument, "id", ""))
    if called in _DYNAMIC_IMPORTERS and isinstance(target, str) and _is_ours(target):
        raise ValueError(f"{where}: `{called}({target!r})` imports videoadapt dynamically, which remote code cannot "
                         "follow; use a `from videoadapt.<module> import <name>` statement.")  # fmt: skip


def scan_imports(source: str, path: str = "<source>") -> list[str]:
    """The videoadapt modules that `source` imports (at any depth), in order of appearance.

    Raises:
        ValueError: for an import the flat folder cannot reproduce: `import videoadapt...` without `as`, an import
            from a package, a relative import, or `importlib.import_module("videoadapt...")` (also through a
            module-level string constant).
    """
    found = sorted(_import_nodes(ast.parse(source, path), path), key=lambda item: (item[0].lineno, item[0].col_offset))
    return list(dict.fromkeys(module for _, module in found))


def _relative_statement(node: ast.stmt, module: str) -> str:
    """`from videoadapt.x.y import a as b` -> `from .x_y import a as b`; `import videoadapt.x as m` ->
    `from . import x as m`."""
    if isinstance(node, ast.Import):
        return f"from . import {flat_module_name(module)} as {node.names[0].asname}"
    names = ", ".join(a.name if a.asname is None else f"{a.name} as {a.asname}" for a in node.names)
    return f"from .{flat_module_name(module)} import {names}"


def rewrite_imports(source: str, path: str = "<source>") -> str:
    """`source` with every videoadapt import (at any depth) made relative to the flat folder.

    `from videoadapt.<m> import ...` becomes `from .<flat m> import ...` and `import videoadapt.<m> as n` becomes
    `from . import <flat m> as n`. Line numbers are kept: an import over k lines becomes one line and k - 1 empty
    lines.
    """
    lines = source.splitlines(keepends=True)
    for node, module in sorted(_import_nodes(ast.parse(source, path), path), key=lambda item: -item[0].lineno):
        first, last = node.lineno - 1, node.end_lineno - 1
        head, tail = lines[first][: node.col_offset], lines[last][node.end_col_offset :].strip()
        if head.strip() or tail and not tail.startswith("#"):
            raise ValueError(f"{path}:{node.lineno}: put the import of `{module}` on lines of its own.")
        lines[first : last + 1] = [f"{head}{_relative_statement(node, module)}\n"] + ["\n"] * (last - first)
    return "".join(lines)


def _module_source(module: str) -> str:
    spec = importlib.util.find_spec(module)
    return Path(spec.origin).read_text(encoding="utf-8")


def module_closure(roots: Iterable[str]) -> dict[str, str]:
    """Every videoadapt module that the `roots` need, transitively: module name -> source, sorted by name."""
    sources, todo = {}, list(roots)
    while todo:
        module = todo.pop()
        if module not in sources:
            sources[module] = _module_source(module)
            todo.extend(scan_imports(sources[module], module))
    return dict(sorted(sources.items()))
