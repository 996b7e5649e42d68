"""The `videoadapt` console script.

videoadapt --version
videoadapt models            # every registered model type, its classes and Auto classes
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import videoadapt
from videoadapt._auto import AUTO_MODEL_CLASSES, ModelRow


__all__ = ["build_parser", "main"]


def _qualname(cls: type | None) -> str:
    return "-" if cls is None else f"{cls.__module__}.{cls.__qualname__}"


def describe_rows(rows: Sequence[ModelRow]) -> list[dict[str, str]]:
    """One dict per model type: config, processor, and each Auto class with the model class it loads."""
    described = []
    for row in rows:
        entry = {"model_type": row.model_type, "AutoConfig": _qualname(row.config_class)}
        for auto_name in AUTO_MODEL_CLASSES:
            if auto_name in row.model_classes:
                entry[auto_name] = _qualname(row.model_classes[auto_name])
        entry["AutoProcessor"] = _qualname(row.processor_class)
        described.append(entry)
    return described


def _cmd_models(args: argparse.Namespace) -> int:
    rows = describe_rows(videoadapt.registered_rows())
    if args.json:
        import json

        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("No model types are registered.")
        return 0
    for entry in rows:
        print(entry["model_type"])
        for key, value in entry.items():
            if key != "model_type":
                print(f"  {key:<28} {value}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="videoadapt", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"videoadapt {videoadapt.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    models = sub.add_parser("models", help="list every registered model type and its classes")
    models.add_argument("--json", action="store_true", help="print JSON instead of a table")
    models.set_defaults(func=_cmd_models)
    importer = sub.add_parser(
        "import-official-pave",
        add_help=False,
        help="convert a released official PAVE patch into a videoadapt patch folder",
    )
    importer.add_argument("args", nargs=argparse.REMAINDER)
    importer.set_defaults(func=_cmd_import_official_pave)
    return parser


def _cmd_import_official_pave(args: argparse.Namespace) -> int:
    from videoadapt.pave_import import main as import_main

    return import_main(args.args)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["import-official-pave"]:  # its own parser takes every argument, --help included
        return _cmd_import_official_pave(argparse.Namespace(args=argv[1:]))
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
