"""coco-caption's (pycocoevalcap 1.2) caption scores in pure Python, on token lists: BLEU-1..4, CIDEr-D, ROUGE-L.

Legend: N examples; example i has one hypothesis (the prediction) and R_i >= 1 references. A *sentence* is a list of
tokens; an *n-gram* a tuple of n consecutive tokens (n = 1..4). Given the same tokens, every function equals
pycocoevalcap's scorer (but see `corpus_rouge_l` on empty sentences; `videoadapt.caption_metrics` wraps them as
`evaluate.Metric`s that also tokenise):

    >>> corpus_rouge_l([["a", "man", "rides"]], [[["a", "man", "riding"], ["a", "rider"]]])[0]
    0.6666666666666666
"""

import math
from collections import Counter
from collections.abc import Sequence


__all__ = ["corpus_bleu", "corpus_cider_d", "corpus_rouge_l"]

_BLEU_TINY = 1e-15  # coco-caption adds it to every clipped match count, so a zero count gives a tiny precision
_BLEU_SMALL = 1e-9  # ... and this to every n-gram total, so an empty prediction does not divide by zero
_CIDER_SIGMA = 6.0  # std of CIDEr-D's Gaussian penalty on the prediction/reference length difference
_ROUGE_BETA = 1.2  # recall weight of ROUGE-L's F-measure in coco-caption


def _ngram_counts(tokens: Sequence[str], max_order: int = 4) -> Counter:
    """Counts of every n-gram of `tokens` for n = 1..max_order."""
    return Counter(tuple(tokens[i : i + n]) for n in range(1, max_order + 1) for i in range(len(tokens) - n + 1))


def _check_corpus(hypotheses: Sequence, references: Sequence) -> None:
    """The scoring functions need N >= 1 token lists and N non-empty lists of reference token lists."""
    if len(hypotheses) != len(references) or not hypotheses or any(len(refs) == 0 for refs in references):
        raise ValueError(
            f"`hypotheses` and `references` must be N >= 1 token lists and N non-empty lists of token lists, got "
            f"{len(hypotheses)} hypotheses and reference list lengths {[len(refs) for refs in references][:10]}."
        )


def corpus_bleu(
    hypotheses: Sequence[Sequence[str]], references: Sequence[Sequence[Sequence[str]]]
) -> dict[str, float]:
    """Corpus BLEU-1..4 as coco-caption: clipped n-gram matches and totals summed over the corpus, the reference
    length closest to each prediction's (ties: the shorter) for the brevity penalty, and its epsilons (1e-15 on
    matches, 1e-9 on totals and lengths). BLEU-n = BP * (p_1 * ... * p_n) ** (1 / n), BP = min(1, exp(1 - r / c)).

    Returns:
        bleu_1 .. bleu_4, brevity_penalty, length_ratio ((c + 1e-15) / (r + 1e-9): prediction / reference tokens).
    """
    _check_corpus(hypotheses, references)
    matches, totals = [0] * 4, [0] * 4
    hyp_length = ref_length = 0
    for hyp, refs in zip(hypotheses, references):
        max_ref_counts = Counter()
        for ref in refs:
            max_ref_counts |= _ngram_counts(ref)  # union of Counters keeps the max count of each n-gram
        for ngram, count in _ngram_counts(hyp).items():
            matches[len(ngram) - 1] += min(count, max_ref_counts[ngram])
        for n in range(4):
            totals[n] += max(0, len(hyp) - n)
        hyp_length += len(hyp)
        ref_length += min((len(ref) for ref in refs), key=lambda length: (abs(length - len(hyp)), length))
    ratio = (hyp_length + _BLEU_TINY) / (ref_length + _BLEU_SMALL)
    brevity_penalty = math.exp(1 - 1 / ratio) if ratio < 1 else 1.0
    scores, product = {}, 1.0
    for n in range(4):
        product *= (matches[n] + _BLEU_TINY) / (totals[n] + _BLEU_SMALL)
        scores[f"bleu_{n + 1}"] = product ** (1 / (n + 1)) * brevity_penalty
    return {**scores, "brevity_penalty": brevity_penalty, "length_ratio": ratio}


def _tfidf(counts: Counter, doc_freq: Counter, log_num_docs: float) -> tuple[list[dict], list[float]]:
    """Per-order TF-IDF vectors {n-gram: tf * (log N - log max(1, df))} and their L2 norms (orders 1..4)."""
    vectors: list[dict] = [{} for _ in range(4)]
    for ngram, term_freq in counts.items():
        vectors[len(ngram) - 1][ngram] = term_freq * (log_num_docs - math.log(max(1.0, doc_freq[ngram])))
    return vectors, [math.sqrt(sum(weight * weight for weight in vector.values())) for vector in vectors]


def _cider_similarity(hyp: tuple, ref: tuple, length_delta: int) -> list[float]:
    """Per-order clipped cosine sum_g min(h_g, r_g) r_g / (|h| |r|) times the Gaussian length penalty."""
    (hyp_vectors, hyp_norms), (ref_vectors, ref_norms) = hyp, ref
    penalty = math.exp(-(length_delta**2) / (2 * _CIDER_SIGMA**2))
    similarities = []
    for hyp_vector, ref_vector, hyp_norm, ref_norm in zip(hyp_vectors, ref_vectors, hyp_norms, ref_norms):
        dot = sum(min(weight, ref_vector[g]) * ref_vector[g] for g, weight in hyp_vector.items() if g in ref_vector)
        if hyp_norm != 0 and ref_norm != 0:
            dot /= hyp_norm * ref_norm
        similarities.append(dot * penalty)
    return similarities


def corpus_cider_d(
    hypotheses: Sequence[Sequence[str]], references: Sequence[Sequence[Sequence[str]]]
) -> tuple[float, list[float]]:
    """CIDEr-D as coco-caption: n = 1..4, document frequencies counted over the references of the evaluated set
    (one document per example), sigma = 6 Gaussian length penalty, clipped TF-IDF cosine; per example the mean over n
    of the similarities summed over references, divided by R_i, times 10. With N = 1 every IDF is log(1) = 0, so the
    score is 0.

    Returns:
        (corpus score: mean over examples, per-example scores)
    """
    _check_corpus(hypotheses, references)
    ref_counts = [[_ngram_counts(ref) for ref in refs] for refs in references]
    doc_freq = Counter(ngram for counts in ref_counts for ngram in set().union(*counts))
    log_num_docs = math.log(float(len(references)))
    per_example = []
    for hyp, refs, counts in zip(hypotheses, references, ref_counts):
        hyp_tfidf = _tfidf(_ngram_counts(hyp), doc_freq, log_num_docs)
        summed = [0.0] * 4
        for ref, ref_count in zip(refs, counts):
            ref_tfidf = _tfidf(ref_count, doc_freq, log_num_docs)
            summed = [a + b for a, b in zip(summed, _cider_similarity(hyp_tfidf, ref_tfidf, len(hyp) - len(ref)))]
        per_example.append(sum(summed) / 4 / len(refs) * 10.0)
    return sum(per_example) / len(per_example), per_example


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence (dynamic programming over one rolling row)."""
    row = [0] * (len(b) + 1)
    for token in a:
        diagonal = 0
        for j, other in enumerate(b, start=1):
            diagonal, row[j] = row[j], diagonal + 1 if token == other else max(row[j], row[j - 1])
    return row[-1]


def corpus_rouge_l(
    hypotheses: Sequence[Sequence[str]], references: Sequence[Sequence[Sequence[str]]]
) -> tuple[float, list[float]]:
    """ROUGE-L as coco-caption: per example P = max over references of LCS / |prediction|, R = max of LCS / |ref|
    (maxima taken separately), F = (1 + b^2) P R / (R + b^2 P) with b = 1.2 (0 when P or R is 0; an empty sentence
    has P or R 0). One deliberate difference: coco-caption splits on " ", so to it an empty sentence is the one token
    "" and an empty prediction scores 1 against an empty reference; here it scores 0.

    Returns:
        (corpus score: mean over examples, per-example scores)
    """
    _check_corpus(hypotheses, references)
    per_example = []
    for hyp, refs in zip(hypotheses, references):
        lcs = [_lcs_length(ref, hyp) for ref in refs]
        precision = max(common / len(hyp) if hyp else 0.0 for common in lcs)
        recall = max(common / len(ref) if ref else 0.0 for common, ref in zip(lcs, refs))
        beta2 = _ROUGE_BETA**2
        per_example.append(
            (1 + beta2) * precision * recall / (recall + beta2 * precision) if precision and recall else 0.0
        )
    return sum(per_example) / len(per_example), per_example
