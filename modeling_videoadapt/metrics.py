"""Evaluation metrics shipped in the package, as `evaluate.Metric` subclasses.

`evaluate.load("accuracy")` fetches a script from the Hub at run time; these classes are instantiated directly
and never touch the network:

    from videoadapt.metrics import Accuracy, Bleu, Cider, ExactMatchAt1

    Accuracy().compute(predictions=["red", "blue"], references=["red", "green"])  # {"accuracy": 0.5}
    ExactMatchAt1().compute(predictions=["The chair."], references=[["chair", "brown chair"]])  # em1 = 1.0
    Cider().compute(predictions=captions, references=reference_lists)  # {"cider": ...}

| class | returns | as |
|---|---|---|
| `Accuracy` | accuracy | exact match of class ids or strings |
| `ExactMatchAt1` | em1, em1_refined | ScanQA / SQA3D EM@1 of the LEO / LLaVA-3D evaluators (used by PAVE) |
| `Bleu` | bleu_1 .. bleu_4, brevity_penalty, length_ratio | coco-caption (pycocoevalcap) |
| `Cider` | cider (CIDEr-D) | coco-caption |
| `RougeL` | rouge_l | coco-caption |
| `Meteor` | meteor | coco-caption's METEOR 1.5 jar, needs `java` and pycocoevalcap |

The caption metrics live in `videoadapt.caption_metrics` (`videoadapt.meteor_metric` for METEOR) and are
re-exported here. Every text metric takes one prediction str and a str or a non-empty list of reference strs per
example.
"""

import numbers
import re
from collections.abc import Sequence
from typing import Any

import datasets
import evaluate

from videoadapt.caption_metrics import (
    Bleu,
    Cider,
    InMemoryMetric,
    ReferenceMetric,
    RougeL,
    check_batch,
    reference_features,
)
from videoadapt.caption_tokenizer import ptb_tokenize
from videoadapt.meteor_metric import Meteor, MeteorUnavailableError, meteor_unavailable_reason


__all__ = [
    "Accuracy",
    "Bleu",
    "Cider",
    "ExactMatchAt1",
    "Meteor",
    "MeteorUnavailableError",
    "RougeL",
    "check_label_inputs",
    "meteor_unavailable_reason",
    "normalize_answer",
    "normalize_scanqa_answer",
    "ptb_tokenize",
]

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
    predictions: list of int class ids or str answers (integral floats such as 2.0 count as ints).
    references: list of the same type and length.
    normalize: compare strings after `normalize_answer` (default False: exact match as given).
    sample_weight: optional list of non-negative weights, one per example.
Returns:
    accuracy: float in [0, 1].
Example:
    >>> Accuracy().compute(predictions=[0, 1, 2, 3], references=[0, 1, 1, 3])
    {'accuracy': 0.75}
"""


def _check_label(value: Any, name: str) -> int | str:
    """One class id (an int, numpy int, or integral float such as 2.0) or str answer."""
    if isinstance(value, numbers.Integral) or (isinstance(value, numbers.Real) and float(value).is_integer()):
        return int(value)
    if not isinstance(value, str):
        raise TypeError(
            f"`{name}` must be an int class id or a str answer, got {type(value).__name__} ({value!r:.40}); "
            "pass class ids (e.g. `logits.argmax(-1)`), not scores."
        )
    return value


def check_label_inputs(predictions: Any, references: Any) -> tuple[list[int | str], list[int | str]]:
    """Validate a batch of `Accuracy`: lists of the same length, not empty, every entry an int class id or every
    entry a str answer. Raises TypeError / ValueError naming the argument (and index) at fault."""
    predictions, references = check_batch(predictions, references)
    predictions = [_check_label(p, f"predictions[{i}]") for i, p in enumerate(predictions)]
    references = [_check_label(r, f"references[{i}]") for i, r in enumerate(references)]
    kind = isinstance(predictions[0], str)
    for name, values in (("predictions", predictions), ("references", references)):
        for i, value in enumerate(values):
            if isinstance(value, str) != kind:
                raise TypeError(
                    f"`{name}[{i}]` is {type(value).__name__} but `predictions[0]` is "
                    f"{type(predictions[0]).__name__}: pass only int class ids or only str answers."
                )
    return predictions, references


class Accuracy(InMemoryMetric):
    """Exact-match accuracy over class ids or answer strings; kept in memory by default (no cache files)."""

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

    def add_batch(self, *, predictions: Any = None, references: Any = None, **kwargs: Any) -> None:
        """Validate, then add a batch of predictions and references (int class ids or str answers)."""
        predictions, references = check_label_inputs(predictions, references)
        super().add_batch(predictions=predictions, references=references, **kwargs)

    def add(self, *, prediction: Any = None, reference: Any = None, **kwargs: Any) -> None:
        """Validate, then add one prediction and its reference (int class ids or str answers)."""
        (prediction,), (reference,) = check_label_inputs([prediction], [reference])
        super().add(prediction=prediction, reference=reference, **kwargs)

    def _compute(
        self,
        predictions: Sequence[int | str],
        references: Sequence[int | str],
        normalize: bool = False,
        sample_weight: Sequence[float] | None = None,
    ) -> dict[str, float]:
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


# ---------------------------------------------------------------------------------------------------------------------
# EM@1 (ScanQA / SQA3D)

# the answer clean-up of LEO's data_utils, copied by LLaVA-3D's scanqa/sqa3d evaluators (which PAVE runs), as rules
_SCANQA_TYPOS = {
    "letf": "left",
    "let": "left",
    "tehre": "there",
    "rigth": "right",
    "rght": "right",
    "behine": "behind",
    "tv": "TV",
    "chai": "chair",
    "wasing": "washing",
    "waslked": "walked",
    "oclock": "o'clock",
}
_SCANQA_NUMBERS = dict(
    zip(
        ["0", "none", *map(str, range(1, 21)), "23"],
        "zero zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
        "seventeen eighteen nineteen twenty twenty-three".split(),
    )
)


def _whole_words(table: dict[str, str]) -> re.Pattern:
    return re.compile(r"\b(" + "|".join(map(re.escape, table)) + r")\b")


_SCANQA_STEPS: list[tuple[re.Pattern, Any]] = [
    (re.compile(r" +$"), ""),  # trailing spaces (only spaces, and before any punctuation is removed)
    (re.compile(r"^ +"), ""),  # leading spaces
    (re.compile(r" {2,}"), " "),  # runs of spaces
    (re.compile(r"[^a-zA-Z0-9,'\s\-:]+"), ""),  # everything but ASCII letters, digits, whitespace and ,'-:
    (_whole_words(_SCANQA_TYPOS), lambda m: _SCANQA_TYPOS[m.group(1)]),
    (re.compile(r"\bo'[ ]+clock\b"), "o'clock"),
    (_whole_words(_SCANQA_NUMBERS), lambda m: _SCANQA_NUMBERS[m.group(1)]),  # 0-20, 23 and "none" as words
    (re.compile(r"\b([a-zA-Z]+)[0-9]\b"), r"\1"),  # one trailing digit of a word: no1 -> no, mat2 -> mat
    (re.compile(r"\ba\b ([a-zA-Z]+)"), r"\1"),  # articles before a word, in this order: a, an, the
    (re.compile(r"\ban\b ([a-zA-Z]+)"), r"\1"),
    (re.compile(r"\bthe\b ([a-zA-Z]+)"), r"\1"),
    (re.compile(r"\bbackwards\b"), "backward"),
]


def normalize_scanqa_answer(text: str) -> str:
    """ScanQA / SQA3D answer normalisation of the LEO evaluator, reused by LLaVA-3D's (and so PAVE's) EM@1.

    In order: lower case; strip leading / trailing spaces and collapse runs of spaces; drop every character but ASCII
    letters, digits, whitespace and `,'-:` (so "." and "?" go, but a space left before them stays: "chair ." ->
    "chair "); fix the evaluator's typo list (letf/let -> left, rigth -> right, tv -> TV, ...); write 0-20 and 23
    (and "none") as words; drop one trailing digit of a word ("mat2" -> "mat"); drop "a", "an", "the" before a
    word; "backwards" -> "backward". (The reference's ç -> c and ’ -> ' rules come after the character filter and
    never fire, so they are left out.)

    Example:
        >>> normalize_scanqa_answer("The 2 brown chairs.")
        'two brown chairs'
    """
    text = str(text).lower()
    for pattern, replacement in _SCANQA_STEPS:
        text = pattern.sub(replacement, text)
    return text


def _squeeze(text: str) -> str:
    return "".join(text.split())


_EM_INPUTS = """\
Args:
    predictions: list of N str, the top-1 answer of each question.
    references: list of N entries, each a str or a non-empty list of str (the accepted answers).
    normalize: True (default) compares after `normalize_scanqa_answer`; False compares the strings as given.
Returns:
    em1: fraction of predictions equal to one of their references.
    em1_refined: fraction whose prediction, spaces removed, contains or is contained in one of the references
        (spaces removed); an empty prediction is contained in every reference and counts, as in the reference.
Example:
    >>> ExactMatchAt1().compute(predictions=["The table", "3"], references=[["table"], ["two", "2"]])
    {'em1': 0.5, 'em1_refined': 0.5}
"""


class ExactMatchAt1(ReferenceMetric):
    """EM@1 of ScanQA / SQA3D as the LEO / LLaVA-3D evaluators compute it (`normalize_scanqa_answer`)."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=(
                "Top-1 exact match (EM@1) of 3D question answering (ScanQA, SQA3D): the predicted answer equals any "
                "accepted answer after the ScanQA answer normalisation of the LEO / LLaVA-3D evaluators; also the "
                "'refined' EM of those evaluators (containment after removing spaces)."
            ),
            citation=(
                "@inproceedings{azuma2022scanqa, title={ScanQA: 3D Question Answering for Spatial Scene "
                "Understanding}, author={Azuma, Daichi and Miyanishi, Taiki and Kurita, Shuhei and Kawanabe, "
                "Motoaki}, booktitle={CVPR}, year={2022}}\n"
                "@inproceedings{ma2023sqa3d, title={SQA3D: Situated Question Answering in 3D Scenes}, author={Ma, "
                "Xiaojian and Yong, Silong and Zheng, Zilong and Li, Qing and Liang, Yitao and Zhu, Song-Chun and "
                "Huang, Siyuan}, booktitle={ICLR}, year={2023}}\n"
            ),
            inputs_description=_EM_INPUTS,
            features=reference_features(),
            codebase_urls=[
                "https://github.com/embodied-generalist/embodied-generalist",
                "https://github.com/ZCMax/LLaVA-3D",
            ],
        )

    def _compute(self, predictions: list[str], references: list[list[str]], normalize: bool = True) -> dict:
        if not isinstance(normalize, bool):
            raise TypeError(f"`normalize` must be a bool, got {type(normalize).__name__} ({normalize!r}).")
        clean = normalize_scanqa_answer if normalize else str
        exact = refined = 0
        for prediction, refs in zip(predictions, references):
            prediction, refs = clean(prediction), [clean(ref) for ref in refs]
            hit = prediction in refs
            exact += hit
            squeezed = _squeeze(prediction)
            refined += hit or any(squeezed in _squeeze(ref) or _squeeze(ref) in squeezed for ref in refs)
        return {"em1": exact / len(predictions), "em1_refined": refined / len(predictions)}
