"""Caption metrics as `evaluate.Metric`s, computed as coco-caption (pycocoevalcap 1.2) does: BLEU-1..4, CIDEr-D,
ROUGE-L (pure Python, `videoadapt.caption_scores`); METEOR is in `videoadapt.meteor_metric`.

Legend: N examples; example i has one prediction str and R_i >= 1 reference strs (a single str is one reference).

Text is tokenised by `videoadapt.caption_tokenizer.ptb_tokenize` (a pure-Python stand-in for the Java PTBTokenizer
and punctuation removal that coco-caption runs) or, with `tokenize=False`, taken as already tokenised and split on
whitespace:

    from videoadapt.metrics import Bleu

    Bleu().compute(predictions=["a man rides a horse"], references=[["a man riding a horse", "a rider"]])
"""

from collections.abc import Sequence
from typing import Any

import datasets
import evaluate
from transformers.utils import logging

from videoadapt.caption_scores import corpus_bleu, corpus_cider_d, corpus_rouge_l
from videoadapt.caption_tokenizer import ptb_tokenize


__all__ = [
    "Bleu",
    "Cider",
    "InMemoryMetric",
    "ReferenceMetric",
    "RougeL",
    "check_batch",
    "check_text_inputs",
    "reference_features",
]

logger = logging.get_logger(__name__)


def _type_name(value: Any) -> str:
    return f"{type(value).__name__} ({value!r:.40})"


def _check_text(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"`{name}` must be a str, got {_type_name(value)}; pass decoded text.")
    return value


def _check_references(value: Any, name: str) -> list[str]:
    """One example's references: a str (one reference) or a non-empty list of str."""
    if isinstance(value, str):
        return [value]
    if not isinstance(value, Sequence):
        raise TypeError(f"`{name}` must be a str or a list of str, got {_type_name(value)}.")
    if len(value) == 0:
        raise ValueError(f"`{name}` is an empty list; every prediction needs at least one reference str.")
    return [_check_text(ref, f"{name}[{j}]") for j, ref in enumerate(value)]


def check_batch(predictions: Any, references: Any) -> tuple[list, list]:
    """A batch's two columns as lists (numpy arrays and tensors via `tolist`): not a bare str, the same length and
    not empty; raises TypeError / ValueError naming the argument at fault."""
    predictions, references = (v.tolist() if hasattr(v, "tolist") else v for v in (predictions, references))  # numpy
    for name, value in (("predictions", predictions), ("references", references)):
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            raise TypeError(
                f"`{name}` must be a list (one entry per example), got {_type_name(value)}; wrap it in []."
            )
    if len(predictions) != len(references):
        raise ValueError(
            "`predictions` and `references` must have the same length (one entry each per example), got "
            f"{len(predictions)} predictions and {len(references)} references."
        )
    if not predictions:
        raise ValueError("`predictions` is empty; a score over zero examples is undefined, pass at least one example.")
    return list(predictions), list(references)


def check_text_inputs(predictions: Any, references: Any) -> tuple[list[str], list[list[str]]]:
    """Validate a batch: one prediction str and one reference str or non-empty list of str per example.

    Returns:
        (predictions as a list of str, references as a list of lists of str)
    Raises:
        TypeError / ValueError naming the argument (and index) at fault.
    """
    predictions, references = check_batch(predictions, references)
    return (
        [_check_text(p, f"predictions[{i}]") for i, p in enumerate(predictions)],
        [_check_references(r, f"references[{i}]") for i, r in enumerate(references)],
    )


def reference_features() -> list[datasets.Features]:
    """`evaluate` features of the text metrics: a prediction str and a list of reference strs (or one str)."""
    string = datasets.Value("string")
    return [
        datasets.Features({"predictions": string, "references": datasets.List(string)}),
        datasets.Features({"predictions": string, "references": string}),
    ]


class InMemoryMetric(evaluate.Metric):
    """Base of the shipped metrics: kept in memory by default (no cache files), and `compute()` with no examples
    (none passed, none added since the last `compute`) raises a ValueError saying so."""

    def __init__(self, *args: Any, keep_in_memory: bool = True, **kwargs: Any):
        super().__init__(*args, keep_in_memory=keep_in_memory, **kwargs)

    def compute(self, *, predictions: Any = None, references: Any = None, **kwargs: Any) -> dict | None:
        """Score the examples added so far plus `predictions` / `references` if given (see the metric's inputs)."""
        if predictions is None and references is None and self.writer is None:
            raise ValueError(
                f"`{type(self).__name__}.compute()` has no examples: pass `predictions=` and `references=`, or call "
                "`add` / `add_batch` first (each `compute` consumes the examples added before it)."
            )
        return super().compute(predictions=predictions, references=references, **kwargs)


class ReferenceMetric(InMemoryMetric):
    """Base of the text metrics: one prediction str and one or more reference strs per example (a single str is one
    reference). Inputs are validated before `evaluate` stores them; kept in memory by default (no cache files)."""

    def add_batch(self, *, predictions: Any = None, references: Any = None, **kwargs: Any) -> None:
        """Validate, then add a batch of predictions and references (a str or a list of str per prediction)."""
        predictions, references = check_text_inputs(predictions, references)
        super().add_batch(predictions=predictions, references=references, **kwargs)

    def add(self, *, prediction: Any = None, reference: Any = None, **kwargs: Any) -> None:
        """Validate, then add one prediction and its reference(s) (a str or a list of str)."""
        prediction, reference = _check_text(prediction, "prediction"), _check_references(reference, "reference")
        super().add(prediction=prediction, reference=reference, **kwargs)


def tokenized(
    predictions: list[str], references: list[list[str]], tokenize: bool
) -> tuple[list[list[str]], list[list[list[str]]]]:
    """Token lists of every prediction and reference: `ptb_tokenize` (tokenize=True) or whitespace split."""
    if not isinstance(tokenize, bool):
        raise TypeError(f"`tokenize` must be a bool, got {_type_name(tokenize)}.")
    split = ptb_tokenize if tokenize else str.split
    return [split(p) for p in predictions], [[split(r) for r in refs] for refs in references]


_COCO_CITATION = """\
@article{chen2015microsoft,
  title={Microsoft {COCO} Captions: Data Collection and Evaluation Server},
  author={Chen, Xinlei and Fang, Hao and Lin, Tsung-Yi and Vedantam, Ramakrishna and Gupta, Saurabh and Doll{\\'a}r,
          Piotr and Zitnick, C. Lawrence},
  journal={arXiv preprint arXiv:1504.00325},
  year={2015}
}
"""
_COCO_URLS = ["https://github.com/tylin/coco-caption", "https://github.com/salaniz/pycocoevalcap"]
_CAPTION_INPUTS = """\
Args:
    predictions: list of N str, one generated caption / answer per example.
    references: list of N entries, each a str or a non-empty list of str (the references of that example).
    tokenize: True (default) tokenises with `ptb_tokenize` (lower case, PTB punctuation removal, as coco-caption);
        False splits the given, already tokenised strings on whitespace.
Returns:
    {returns}
"""


def caption_metric_info(description: str, citation: str, returns: str) -> evaluate.MetricInfo:
    """`MetricInfo` of a caption metric: its description and citation plus coco-caption's, the shared inputs."""
    return evaluate.MetricInfo(
        description=description,
        citation=citation + _COCO_CITATION,
        inputs_description=_CAPTION_INPUTS.format(returns=returns),
        features=reference_features(),
        codebase_urls=_COCO_URLS,
    )


class Bleu(ReferenceMetric):
    """Corpus BLEU-1..4 of coco-caption (`corpus_bleu`) on `ptb_tokenize`d text."""

    def _info(self) -> evaluate.MetricInfo:
        return caption_metric_info(
            "BLEU-1..4 (Papineni et al., 2002) exactly as coco-caption: corpus-level clipped n-gram precisions, the "
            "closest reference length for the brevity penalty, coco-caption's 1e-15 / 1e-9 smoothing epsilons.",
            "@inproceedings{papineni2002bleu, title={BLEU: a Method for Automatic Evaluation of Machine Translation},"
            " author={Papineni, Kishore and Roukos, Salim and Ward, Todd and Zhu, Wei-Jing}, booktitle={ACL},"
            " year={2002}}\n",
            "bleu_1 .. bleu_4 (float in [0, 1]), brevity_penalty, length_ratio.",
        )

    def _compute(self, predictions: list[str], references: list[list[str]], tokenize: bool = True) -> dict:
        return corpus_bleu(*tokenized(predictions, references, tokenize))


class Cider(ReferenceMetric):
    """CIDEr-D of coco-caption (`corpus_cider_d`); IDF comes from the references of the evaluated set."""

    def _info(self) -> evaluate.MetricInfo:
        return caption_metric_info(
            "CIDEr-D (Vedantam et al., 2015) exactly as coco-caption: n-grams n = 1..4, TF-IDF with document "
            "frequencies from the references of the evaluated set, clipping, sigma = 6 Gaussian length penalty, x10. "
            "The IDF needs a corpus: one example always scores 0.",
            "@inproceedings{vedantam2015cider, title={CIDEr: Consensus-based Image Description Evaluation}, "
            "author={Vedantam, Ramakrishna and Zitnick, C. Lawrence and Parikh, Devi}, booktitle={CVPR}, year={2015}}\n",
            "cider (float >= 0, at most 10 per example).",
        )

    def _compute(self, predictions: list[str], references: list[list[str]], tokenize: bool = True) -> dict:
        if len(predictions) == 1:
            logger.warning("CIDEr of a single example is always 0 (its IDF is log(1) = 0); score a whole split.")
        score, _ = corpus_cider_d(*tokenized(predictions, references, tokenize))
        return {"cider": score}


class RougeL(ReferenceMetric):
    """ROUGE-L of coco-caption (`corpus_rouge_l`): LCS F-measure with beta = 1.2, mean over examples."""

    def _info(self) -> evaluate.MetricInfo:
        return caption_metric_info(
            "ROUGE-L (Lin, 2004) exactly as coco-caption: longest-common-subsequence precision and recall, each "
            "maximised over the references, combined as an F-measure with beta = 1.2; mean over examples.",
            "@inproceedings{lin2004rouge, title={ROUGE: A Package for Automatic Evaluation of Summaries}, "
            "author={Lin, Chin-Yew}, booktitle={Text Summarization Branches Out}, year={2004}}\n",
            "rouge_l (float in [0, 1]).",
        )

    def _compute(self, predictions: list[str], references: list[list[str]], tokenize: bool = True) -> dict:
        score, _ = corpus_rouge_l(*tokenized(predictions, references, tokenize))
        return {"rouge_l": score}
