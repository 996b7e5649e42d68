"""Export a saved videoadapt model as a flat folder that plain transformers loads with `trust_remote_code=True`.

transformers' remote code (`dynamic_module_utils`) copies the module an `auto_map` entry names, and every module it
imports as `from .<name> import ...` from the same folder, into its module cache; absolute imports must name
installed packages. videoadapt spans several folders and imports itself absolutely, so the export

1. collects the `videoadapt` modules that the row's config, model classes and processor need (every import
   statement, function-level ones included, followed transitively; dynamic imports of videoadapt are refused);
2. writes each as one flat file (`videoadapt.layers.rotary` -> `layers_rotary.py`,
   `videoadapt.configuration.configuration_pave` -> `configuration_pave.py`, `videoadapt.processors.sampling` ->
   `processors_sampling.py`), its videoadapt imports rewritten as `from .<flat> import ...` (line numbers kept);
3. appends to each modeling file the checkpoint weight-name conversions that `import videoadapt` registers:
   transformers applies conversions to remote-code classes only when they are registered, and saves these models'
   weights under their base family's original names;
4. copies weights, configs, tokenizers and PAVE's `patches/` as they are, writes `auto_map` into `config.json` and
   `processor_config.json`, and lists the packages the code imports in `requirements.txt`.

The folder is written beside `out_dir` and renamed into place when complete.
"""

import ast
import importlib.metadata
import json
import os
import shutil
import sys
import uuid
from collections.abc import Iterable
from pathlib import Path

from huggingface_hub import ModelCard
from transformers.conversion_mapping import get_checkpoint_conversion_mapping
from transformers.dynamic_module_utils import get_relative_import_files
from transformers.utils import logging

from videoadapt import REGISTRY, ModelRow, __version__
from videoadapt.remote_code_imports import flat_module_name, module_closure, rewrite_imports


__all__ = ["export_remote_code"]

logger = logging.get_logger(__name__)

_CODE_HEADER = "# Exported by `videoadapt export-remote-code` (videoadapt {version}) from `{module}`.\n"
_CONVERSIONS = """

# Added by `videoadapt export-remote-code`: the checkpoint weight-name conversions that `import videoadapt`
# registers. transformers applies conversions to remote-code classes only when they are registered, and it saves
# these models' weights under their base family's original names.
def _register_weight_conversions() -> None:
    from transformers.conversion_mapping import get_checkpoint_conversion_mapping as registered
    from transformers.conversion_mapping import register_checkpoint_conversion_mapping as register

    for key, source in {table!r}.items():  # model type or class name -> the transformers key it copies
        if registered(key) is None:
            register(key, registered(source))


_register_weight_conversions()
"""


# --------------------------------------------------------------------------------------------- one row's code


def _row_of(model_dir: Path) -> ModelRow:
    """The registry row of the videoadapt model saved in `model_dir`."""
    config_file = model_dir / "config.json"
    if not model_dir.is_dir() or not config_file.is_file():
        raise ValueError(f"`model_dir` must be a folder saved with `save_pretrained` (holding config.json), got "
                         f"{str(model_dir)!r}.")  # fmt: skip
    try:
        model_type = json.loads(config_file.read_text(encoding="utf-8")).get("model_type")
    except (ValueError, AttributeError) as error:
        raise ValueError(f"`model_dir` {str(model_dir)!r}: config.json is not a JSON object ({error}).") from None
    rows = {row.model_type: row for row in REGISTRY}
    if model_type not in rows:
        raise ValueError(f"`model_dir` {str(model_dir)!r} holds a {model_type!r} model; export-remote-code exports "
                         f"videoadapt models, one of {sorted(rows)}.")  # fmt: skip
    return rows[model_type]


def _reference(cls: type) -> str:
    return f"{flat_module_name(cls.__module__)}.{cls.__name__}"


def _conversion_sources(row: ModelRow) -> dict[str, str]:
    """Model type or class name -> the transformers key whose conversions `import videoadapt` registered for it
    (read back from the live registry, so the exported table follows `videoadapt._auto`)."""
    classes = list(dict.fromkeys(row.model_classes.values()))
    candidates = [row.weights_like] if row.weights_like else []
    candidates += [b.__name__ for c in classes for b in c.__mro__ if b.__module__.startswith("transformers.")]
    table = {}
    for key in (row.model_type, *(c.__name__ for c in classes)):
        registered = get_checkpoint_conversion_mapping(key)
        if registered is not None:
            same = (c for c in candidates if repr(get_checkpoint_conversion_mapping(c)) == repr(registered))
            table[key] = next(same, None)
            if table[key] is None:
                raise RuntimeError(f"the conversions registered for {key!r} match none of {candidates}; update "
                                   "`videoadapt.remote_code._conversion_sources`.")  # fmt: skip
    return table


def _code_files(row: ModelRow) -> dict[str, str]:
    """File name -> source of every flat module the row needs (model files end with the weight conversions)."""
    roots = [row.config_class.__module__, *(c.__module__ for c in row.model_classes.values())]
    roots += [row.processor_class.__module__] if row.processor_class else []
    files = {}
    for module, source in module_closure(roots).items():
        name = f"{flat_module_name(module)}.py"
        if name in files:
            raise RuntimeError(f"two videoadapt modules flatten to {name}; rename one of them.")
        files[name] = _CODE_HEADER.format(version=__version__, module=module) + rewrite_imports(source, module)
    table = _conversion_sources(row)
    for module in dict.fromkeys(c.__module__ for c in row.model_classes.values()):
        files[f"{flat_module_name(module)}.py"] += _CONVERSIONS.format(table=table) if table else ""
    return files


def _requirements(files: dict[str, str]) -> list[str]:
    """The distributions of the third-party packages the code imports (stdlib and relative imports left out)."""
    imported = set()
    for source in files.values():
        for node in ast.walk(ast.parse(source)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names += [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else []
            imported.update(name.split(".")[0] for name in names)
    distributions = importlib.metadata.packages_distributions()
    third_party = sorted(imported - set(sys.stdlib_module_names) - {"__future__"})
    return sorted({distributions.get(name, [name])[0] for name in third_party})


def _relative_modules(source: str) -> list[str]:
    """Modules of the flat folder that `source` imports (`from .x import ...` and `from . import x`)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found += [node.module] if node.module else [alias.name for alias in node.names]
    return found


def _check_copied_together(folder: Path, entries: Iterable[str]) -> None:
    """transformers copies an `auto_map` module plus what its `from .x import` lines reach, recursively (regular
    expressions, so `from . import x` is invisible): check that this covers every module the entry imports."""
    for entry in entries:
        needed, todo = set(), [entry]
        while todo:
            name = todo.pop()
            if name not in needed:
                needed.add(name)
                todo += _relative_modules((folder / f"{name}.py").read_text(encoding="utf-8"))
        copied = {entry} | {Path(f).stem for f in get_relative_import_files(folder / f"{entry}.py")}
        if needed - copied:
            raise RuntimeError(f"transformers would load {entry}.py without {sorted(needed - copied)}: they are "
                               "reached only through `import videoadapt.<m> as <name>`; import them with `from`.")  # fmt: skip


# --------------------------------------------------------------------------------------------- the folder


def _update_json(path: Path, auto_map: dict[str, str]) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    data["auto_map"] = auto_map
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


REMOTE_CODE_SECTION = """
## Loading without videoadapt

This folder carries the videoadapt code it needs (`trust_remote_code`); plain transformers loads it:

```python
from transformers import AutoModelForImageTextToText, AutoProcessor

model = AutoModelForImageTextToText.from_pretrained("<this folder or repo>", trust_remote_code=True)
processor = AutoProcessor.from_pretrained("<this folder or repo>", trust_remote_code=True)
```
"""


def _mark_card(path: Path) -> None:
    """Tag the copied model card `custom_code` (as the Hub does for remote-code models) and say how to load it."""
    card = ModelCard(path.read_text(encoding="utf-8"))
    card.data.tags = [
        *(card.data.tags or []),
        *(["custom_code"] if "custom_code" not in (card.data.tags or []) else []),
    ]
    path.write_text(str(card).rstrip("\n") + "\n" + REMOTE_CODE_SECTION, encoding="utf-8")


def _write_folder(row: ModelRow, model_dir: Path, folder: Path) -> None:
    """Copy `model_dir` into the new `folder` (old top-level code left out), then add the code and `auto_map`s."""

    def ignored(directory: str, names: list[str]) -> list[str]:
        top = Path(directory) == model_dir
        return [name for name in names if name == "__pycache__" or top and name.endswith(".py")]

    shutil.copytree(model_dir, folder, ignore=ignored)
    files = _code_files(row)
    for name, source in files.items():
        (folder / name).write_text(source, encoding="utf-8")
    if not (folder / "requirements.txt").exists():
        (folder / "requirements.txt").write_text("".join(f"{name}\n" for name in _requirements(files)))
    if (folder / "README.md").is_file():
        _mark_card(folder / "README.md")
    auto_map = {"AutoConfig": _reference(row.config_class)}
    auto_map.update({auto_name: _reference(cls) for auto_name, cls in row.model_classes.items()})
    _update_json(folder / "config.json", auto_map)
    entries = [*auto_map.values(), *([_reference(row.processor_class)] if row.processor_class else [])]
    _check_copied_together(folder, dict.fromkeys(entry.split(".")[0] for entry in entries))
    if row.processor_class is None:
        return
    if (folder / "processor_config.json").is_file():
        _update_json(folder / "processor_config.json", {"AutoProcessor": _reference(row.processor_class)})
    else:
        logger.warning(f"{model_dir} has no processor_config.json: AutoProcessor will not load the export; save the "
                       "processor into the model folder first.")  # fmt: skip


def _check_out_dir(model_dir: Path, out_dir: Path, overwrite: bool) -> None:
    source, target = model_dir.resolve(), out_dir.resolve()
    if source == target or source in target.parents or target in source.parents:
        raise ValueError(f"`out_dir` {str(out_dir)!r} must lie outside `model_dir` {str(model_dir)!r} and not "
                         "contain it; pass another folder.")  # fmt: skip
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"`out_dir` {str(out_dir)!r} is a file; pass a folder path.")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise ValueError(f"`out_dir` {str(out_dir)!r} is not empty; pass a new folder, or `overwrite=True` "
                         "(`--overwrite`) to replace what it holds.")  # fmt: skip


def export_remote_code(model_dir: str | os.PathLike, out_dir: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write the videoadapt model saved in `model_dir` as a flat folder that loads without videoadapt installed.

    The result loads with `AutoConfig`/`AutoModelForImageTextToText`/`AutoModelForMultimodalLM` (and `AutoModel`
    where the type registers a headless class) and `AutoProcessor`, all with `trust_remote_code=True`.

    Args:
        model_dir: a folder written by a videoadapt model's `save_pretrained` (and its processor's).
        out_dir: the folder to write; it must not exist or be empty unless `overwrite`. It is built in a temporary
            sibling and renamed into place, so it never holds a half-written export.
        overwrite: replace whatever `out_dir` holds.

    Returns:
        `out_dir` as a `Path`.
    """
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    row = _row_of(model_dir)
    _check_out_dir(model_dir, out_dir, overwrite)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = out_dir.with_name(f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        _write_folder(row, model_dir, staging)
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(out_dir, old)
            os.replace(staging, out_dir)
            shutil.rmtree(old)
        else:
            os.replace(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info(f"Exported {row.model_type} from {model_dir} to {out_dir} for trust_remote_code=True.")
    return out_dir
