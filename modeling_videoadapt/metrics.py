"""Evaluation metrics shipped in the package, as `evaluate.Metric` subclasses.

`evaluate.load("accuracy")` fetches a script from the Hub at run time; these classes are instantiated directly
and never touch the network:

    from videoadapt.metrics import Accuracy

    Accuracy().compute(predictions=["red", "blue"], references=["red", "green"])  # {"accuracy": 0.5}
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import datasets
import evaluate


__all__ = ["Accuracy", "normalize_answer"]

_WHITESPACE = re.compile(r"\s+")
_TRAILING_PUNCTUATION = ".,;:!?\"'"


def normalize_answer(text: str) -> str:
    """Lower case, whitespace collapsed, surrounding whitespace and trailing punctuation removed."""
    return _WHITESPACE.sub(" ", str(text)).strip().rstrip(_TRAILING_PUNCTUATION).strip().lower()


_DESCRIPTION = """\
Accuracy: the (weighted) fraction of predictions equal to their reference. Predictions and references are either
class ids (ints) or answer strings; strings are compared by exact match, after `normalize_answer` (lower case,
collapsed whitespace, no trailing punctuation) when `normalize=True`.
"""

_INPUTS = """\
Args:
    predictions: list of int class ids or str answers.
    references: list of the same type and length.
    normalize: compare strings after `normalize_answer` (default False: exact match as given).
    sample_weight: optional list of non-negative weights, one per example.
Returns:
    accuracy: float in [0, 1].
Example:
    >>> Accuracy().compute(predictions=[0, 1, 2, 3], references=[0, 1, 1, 3])
    {'accuracy': 0.75}
"""


class Accuracy(evaluate.Metric):
    """Exact-match accuracy over class ids or answer strings; kept in memory by default (no cache files)."""

    def __init__(self, *args: Any, keep_in_memory: bool = True, **kwargs: Any):
        super().__init__(*args, keep_in_memory=keep_in_memory, **kwargs)

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_INPUTS,
            features=[
                datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
                datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
            ],
        )

    def _compute(
        self,
        predictions: Sequence[int | str],
        references: Sequence[int | str],
        normalize: bool = False,
        sample_weight: Sequence[float] | None = None,
    ) -> dict[str, float]:
        if len(predictions) != len(references):
            raise ValueError(f"got {len(predictions)} predictions for {len(references)} references.")
        if not predictions:
            raise ValueError("accuracy of zero examples is undefined; pass at least one prediction.")
        if normalize:
            predictions = [normalize_answer(p) if isinstance(p, str) else p for p in predictions]
            references = [normalize_answer(r) if isinstance(r, str) else r for r in references]
        weights = [1.0] * len(predictions) if sample_weight is None else [float(w) for w in sample_weight]
        if len(weights) != len(predictions) or min(weights) < 0 or sum(weights) <= 0:
            raise ValueError(
                f"`sample_weight` needs {len(predictions)} non-negative weights with a positive sum, got {weights}."
            )
        correct = sum(w for p, r, w in zip(predictions, references, weights) if p == r)
        return {"accuracy": float(correct / sum(weights))}
