"""Shared pieces of the YAML training recipes (REEF, DynFocus): value checks, strict dataclass building, the
`sources` map, global batch splitting, prefix-based parameter freezing and shipped-recipe lookup.

A recipe module declares frozen dataclasses whose fields carry a check (`spec(check, help)`), then builds them from
YAML with `build_dataclass`: unknown or missing keys, wrong types and out-of-range values raise
`ValueError("<file>: `<field>` must be ..., got ...")`.
"""

import dataclasses
import math
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import field
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import yaml
from torch import nn


__all__ = [
    "Check",
    "Invalid",
    "boolean",
    "build_dataclass",
    "check_sources",
    "choice",
    "integer",
    "list_shipped",
    "load_shipped",
    "module_prefixes",
    "number",
    "optional",
    "pair",
    "read_yaml",
    "require",
    "set_trainable",
    "shown",
    "sources_map",
    "spec",
    "split_batch",
    "stage_training_arguments",
    "text",
    "trainable_parameter_names",
]

T = TypeVar("T")


# --------------------------------------------------------------------------------------------- value checks


class Invalid(Exception):
    """A value broke its field's rule; the message completes "`field` must be ...". Caught by `build_dataclass`."""


Check = Callable[[Any], Any]


def shown(value: Any) -> str:
    """`value` with its type, for error messages: "'64' (str)"."""
    return f"{value!r} ({type(value).__name__})"


def integer(low: int, high: int | None = None) -> Check:
    """An int (not a bool) in [low, high]."""

    def check(value: Any) -> int:
        rule = f"an integer in [{low}, {'inf' if high is None else high}]"
        if not isinstance(value, int) or isinstance(value, bool):
            raise Invalid(f"{rule}, got {shown(value)}")
        if value < low or (high is not None and value > high):
            raise Invalid(f"{rule}, got {value}")
        return value

    return check


def number(low: float, high: float, open_low: bool = False, open_high: bool = False) -> Check:
    """An int or float (not a bool, not NaN) in [low, high], each end open if asked; returned as a float."""
    rule = f"a number in {'(' if open_low else '['}{low}, {high}{')' if open_high else ']'}"

    def check(value: Any) -> float:
        if isinstance(value, str):  # PyYAML reads 1e-4 (no dot) as a string
            raise Invalid(
                f"{rule}, got the string {value!r}; write floats with a dot and a signed exponent, e.g. 1.0e-4"
            )
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise Invalid(f"{rule}, got {shown(value)}")
        below = value <= low if open_low else value < low
        above = value >= high if open_high else value > high
        if below or above or math.isnan(value):
            raise Invalid(f"{rule}, got {value}")
        return float(value)

    return check


def boolean(value: Any) -> bool:
    """true or false (not "yes", not 1)."""
    if not isinstance(value, bool):
        raise Invalid(f"true or false, got {shown(value)}")
    return value


def text(value: Any) -> str:
    """A non-empty string."""
    if not isinstance(value, str) or not value.strip():
        raise Invalid(f"a non-empty string, got {shown(value)}")
    return value


def choice(*options: str) -> Check:
    """One of `options`."""

    def check(value: Any) -> str:
        if value not in options:
            raise Invalid(f"one of {list(options)}, got {shown(value)}")
        return value

    return check


def optional(check: Check, meaning: str) -> Check:
    """null (which means `meaning`) or a value that passes `check`."""

    def optional_check(value: Any) -> Any:
        if value is None:
            return None
        try:
            return check(value)
        except Invalid as error:
            raise Invalid(f"null ({meaning}) or {error}") from None

    return optional_check


def pair(check: Check) -> Check:
    """A list of two values that each pass `check`; returned as a tuple."""

    def pair_check(value: Any) -> tuple:
        if not isinstance(value, list | tuple) or len(value) != 2:
            raise Invalid(f"a list of two numbers, e.g. [0.9, 0.999], got {shown(value)}")
        try:
            return tuple(check(v) for v in value)
        except Invalid as error:
            raise Invalid(f"a list of two numbers whose items are each {error}") from None

    return pair_check


def module_prefixes(value: Any) -> tuple[str, ...]:
    """A list of distinct non-empty names (module names = parameter name prefixes); returned as a tuple."""
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise Invalid(f"a list of module names (parameter name prefixes), got {shown(value)}")
    if len(set(value)) != len(value):
        raise Invalid(f"a list without repeated names, got {value}")
    return tuple(value)


def sources_map(value: Any) -> dict[str, str]:
    """A mapping of field name -> non-empty source text."""
    valid = isinstance(value, dict) and all(isinstance(v, str) and v.strip() for v in value.values())
    if not valid or not all(isinstance(k, str) for k in value):
        raise Invalid(f"a mapping of field name -> non-empty source text, got {shown(value)}")
    return dict(value)


def spec(check: Check | None, doc: str) -> Any:
    """A dataclass field whose YAML value must pass `check` (None: built by a nested builder)."""
    return field(metadata={"check": check, "help": doc})


# --------------------------------------------------------------------------------------------- building


def require(ok: bool, path: Path, message: str) -> None:
    """Raise `ValueError("<path>: <message>")` unless `ok`."""
    if not ok:
        raise ValueError(f"{path}: {message}")


def read_yaml(path: Path) -> Any:
    """The YAML document in `path`; a syntax error raises ValueError naming the file."""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not valid YAML ({error}).") from None


Nested = Callable[[Any, str], Mapping[str, Any]]


def build_dataclass(
    cls: type[T],
    data: Any,
    path: Path,
    prefix: str = "",
    nested: Mapping[str, Nested] | None = None,
    derived: Iterable[str] = ("path",),
) -> T:
    """`cls(**data)` with every key checked: no unknown or missing keys, each value passes its field's check.

    Args:
        cls: a dataclass whose fields were declared with `spec`.
        data: the YAML mapping.
        path: the file, for error messages.
        prefix: the dotted position of `data` in the file ("stages.main."), for error messages.
        nested: YAML key -> builder(value, prefix) returning the field values it sets; a builder may set a field of
            another name ("stages" -> {"initial": ..., "main": ...}) or several.
        derived: fields that are not YAML keys (set by a nested builder or after loading, like `path`).
    """
    where = prefix.rstrip(".") or "the top level"
    if not isinstance(data, dict):
        raise ValueError(f"{path}: {where} must be a mapping of keys to values, got {shown(data)}.")
    nested = nested or {}
    fields = {f.name: f for f in dataclasses.fields(cls)}
    keys = (set(fields) - set(derived) - {"path"}) | set(nested)
    unknown, missing = sorted(set(data) - keys), sorted(keys - set(data))
    if unknown:
        raise ValueError(
            f"{path}: unknown key(s) {[prefix + k for k in unknown]} in {where}; allowed: {sorted(keys)}."
        )
    if missing:
        raise ValueError(f"{path}: missing key(s) {[prefix + k for k in missing]} in {where}; add them.")
    values = {}
    for key, value in data.items():
        if key in nested:
            values.update(nested[key](value, f"{prefix}{key}."))
            continue
        try:
            values[key] = fields[key].metadata["check"](value)
        except Invalid as error:
            raise ValueError(f"{path}: `{prefix}{key}` must be {error}.") from None
    return cls(**values)


def check_sources(
    path: Path,
    sources: Mapping[str, str],
    needed: Iterable[str],
    allowed: Iterable[str],
    shared: Iterable[str],
    hint: str,
) -> None:
    """Every key of `sources` is in `allowed`, and every name in `needed` has a source.

    A needed "<head>.<field>" whose head is in `shared` (the stage names) is also covered by a plain "<field>" entry
    (one source for all stages). `hint` says how keys are spelled.
    """
    shared = tuple(shared)
    unknown = sorted(set(sources) - set(allowed))
    if unknown:
        raise ValueError(f"{path}: `sources` names unknown field(s) {unknown}; {hint}.")

    def covered(name: str) -> bool:
        head, _, tail = name.partition(".")
        return name in sources or (head in shared and tail in sources)

    missing = [name for name in needed if not covered(name)]
    if missing:
        raise ValueError(
            f"{path}: `sources` gives no source for {missing}; say where each value comes from (or 'ours')."
        )


# --------------------------------------------------------------------------------------------- training


def split_batch(global_batch: int, world_size: int, max_per_device: int | None) -> tuple[int, int]:
    """(per-device batch, gradient accumulation steps) with per_device * accumulation * world_size = global_batch.

    The per-device batch is the largest divisor of global_batch / world_size within `max_per_device` (no limit:
    the whole share, no accumulation).
    """
    if not isinstance(world_size, int) or isinstance(world_size, bool) or world_size < 1:
        raise ValueError(f"`world_size` must be an integer >= 1, got {world_size!r}.")
    if global_batch % world_size:
        raise ValueError(
            f"the recipe's global batch size {global_batch} must split evenly over `world_size` = {world_size} "
            f"processes; use a world size that divides {global_batch}."
        )
    per_rank = global_batch // world_size
    if max_per_device is None:
        return per_rank, 1
    if not isinstance(max_per_device, int) or isinstance(max_per_device, bool) or max_per_device < 1:
        raise ValueError(f"`max_per_device_batch_size` must be an integer >= 1 or None, got {max_per_device!r}.")
    per_device = max(d for d in range(1, min(per_rank, max_per_device) + 1) if per_rank % d == 0)
    return per_device, per_rank // per_device


def stage_training_arguments(
    output_dir: str | os.PathLike,
    global_batch: int,
    world_size: int,
    max_per_device_batch_size: int | None,
    overrides: Mapping[str, Any],
    **fields: Any,
) -> Any:
    """`TrainingArguments` of a recipe stage: the global batch split by `split_batch` (per-device batch + gradient
    accumulation), the stage's `fields` (learning_rate, num_train_epochs, adam_beta1, ...), `report_to="none"`,
    `remove_unused_columns=False` (video datasets carry paths and side channels the collator needs), then
    `overrides` (any `TrainingArguments` field) last."""
    from transformers import TrainingArguments

    per_device, accumulation = split_batch(global_batch, world_size, max_per_device_batch_size)
    kwargs = dict(
        output_dir=os.fspath(output_dir),
        per_device_train_batch_size=per_device,
        per_device_eval_batch_size=per_device,
        gradient_accumulation_steps=accumulation,
        report_to="none",
        remove_unused_columns=False,
        **fields,
    )
    kwargs.update(overrides)
    return TrainingArguments(**kwargs)


def trainable_parameter_names(
    model: nn.Module, trainable: Iterable[str], frozen: Iterable[str], context: str
) -> list[str]:
    """Names of the parameters of `model` that the longest matching prefix of `trainable` / `frozen` trains.

    A parameter that no prefix covers raises ValueError (`context` starts the message, e.g. "recipe 'x', stage
    'main'"), so a recipe never silently trains or freezes a module it does not know.
    """
    rules = sorted([(p, True) for p in trainable] + [(p, False) for p in frozen], key=lambda r: -len(r[0]))
    trained, uncovered = [], []
    for name, _ in model.named_parameters():
        decision = next((train for prefix, train in rules if name == prefix or name.startswith(prefix + ".")), None)
        if decision is None:
            uncovered.append(name)
        elif decision:
            trained.append(name)
    if uncovered:
        raise ValueError(
            f"{context}: no `trainable` or `frozen` entry covers the parameters "
            f"{uncovered[:5]}{' ...' if len(uncovered) > 5 else ''}; add their module to one of the two lists."
        )
    return trained


def set_trainable(model: nn.Module, names: Iterable[str]) -> list[str]:
    """`requires_grad` True on exactly the parameters called `names`, False on every other; returns them sorted."""
    trained = set(names)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name in trained)
    return sorted(trained)


# --------------------------------------------------------------------------------------------- shipped recipes


def _folder(folder: str) -> Any:
    return resources.files("videoadapt.recipes") / folder


def list_shipped(folder: str) -> list[str]:
    """Names of the YAMLs shipped in `recipes/<folder>/`, sorted, without the suffix."""
    return sorted(entry.name[: -len(".yaml")] for entry in _folder(folder).iterdir() if entry.name.endswith(".yaml"))


def load_shipped(name_or_path: str | os.PathLike, folder: str, kind: str, load_file: Callable[[Path], T]) -> T:
    """`load_file(path)` for a shipped recipe name of `recipes/<folder>/` or a YAML file path.

    Raises:
        ValueError: neither a shipped name nor an existing file; the message lists the shipped `kind` recipes.
    """
    names = list_shipped(folder)
    if isinstance(name_or_path, str) and name_or_path in names:
        with resources.as_file(_folder(folder) / f"{name_or_path}.yaml") as path:
            return load_file(Path(path))
    path = Path(name_or_path)
    if not path.is_file():
        raise ValueError(
            f"`name_or_path` must be a shipped {kind} recipe ({', '.join(names)}) or a YAML file, "
            f"got {name_or_path!r}."
        )
    return load_file(path)
