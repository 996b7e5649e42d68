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

import re
from collections.abc import Sequence
from typing import Any

import datasets
import evaluate

from videoadapt.caption_metrics import Bleu, Cider, ReferenceMetric, RougeL, reference_features
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
