"""Helpers the `videoadapt` subcommands share: parsers with examples, argument types, progress, errors."""

import argparse
import contextlib
import sys
from collections.abc import Iterator
from typing import Any


__all__ = ["example_parser", "fail", "integer_at_least", "positive_int", "positive_number", "progress_logging"]


def example_parser(sub: argparse._SubParsersAction, name: str, summary: str, example: str, **kwargs: Any):
    """A subcommand described by `summary`, whose `--help` ends with `example`."""
    return sub.add_parser(
        name, help=summary, description=summary[0].upper() + summary[1:] + ".", epilog=example,
        formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs,
    )  # fmt: skip


def integer_at_least(text: str, minimum: int) -> int:
    """`text` as an int >= `minimum`, else an `argparse.ArgumentTypeError` that shows what was received."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {value}")
    return value


def positive_int(text: str) -> int:
    return integer_at_least(text, 1)


@contextlib.contextmanager
def progress_logging() -> Iterator[None]:
    """videoadapt's INFO messages on stderr while a long command runs (the library itself never configures logging)."""
    import logging

    root = logging.getLogger("videoadapt")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[videoadapt] %(message)s"))
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def fail(command: str, error: BaseException) -> int:
    """Report a refused `videoadapt <command>` on stderr as argparse does; the exit code 1."""
    return report_error(f"videoadapt {command}", error)


def report_error(prog: str, error: BaseException) -> int:
    """`<prog>: error: <error>` on stderr; the exit code 1."""
    print(f"{prog}: error: {error}", file=sys.stderr)
    return 1


def positive_number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value
