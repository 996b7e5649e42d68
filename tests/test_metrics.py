"""The shipped metrics: BLEU-1..4, CIDEr-D, ROUGE-L and METEOR against pycocoevalcap's scorers (same tokens),
hand-computed values, the PTB-style tokeniser, ScanQA / SQA3D EM@1, input errors (also of Accuracy) and the METEOR
process plumbing."""

import math
import os
import random
import stat
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from videoadapt import meteor_metric
from videoadapt.caption_scores import corpus_bleu, corpus_cider_d, corpus_rouge_l
from videoadapt.metrics import (
    Accuracy,
    Bleu,
    Cider,
    ExactMatchAt1,
    Meteor,
    MeteorUnavailableError,
    RougeL,
    meteor_unavailable_reason,
    normalize_scanqa_answer,
    ptb_tokenize,
)


# already tokenised (lower case, no punctuation): fed as-is to pycocoevalcap and to ours with tokenize=False
CAPTIONS = [
    ("a man is riding a horse on the beach",
     ["a man rides a brown horse along the beach", "a person riding a horse by the ocean",
      "a man on horseback at the shore"]),
    ("two dogs play with a red ball in the grass",
     ["two dogs are playing with a ball on the grass", "a pair of dogs chase a red ball",
      "dogs playing in a grassy field", "two puppies fight over a red toy", "two dogs play outside"]),
    ("a woman cuts a cake", ["a woman is cutting a birthday cake with a knife"]),
    ("the brown chair is left of the table",
     ["the brown chair is to the left of the table", "a brown chair next to the table"]),
    ("a cat sleeps on the bed",
     ["a black cat is sleeping on a bed", "a cat naps on the blanket", "the cat sleeps on the bed"]),
    ("people walk down a busy street at night",
     ["many people walking on a city street at night", "a crowded street in the evening"]),
    ("a child is eating",
     ["a little girl eats an ice cream cone", "a kid eating ice cream", "a child holds an ice cream",
      "a young girl with a cone"]),
    ("a plate of food with broccoli and rice",
     ["a plate with rice broccoli and chicken", "a dinner plate of chicken and vegetables"]),
    ("a man plays guitar on a stage",
     ["a musician playing an electric guitar on stage", "a man performs with a guitar",
      "a guitarist on a stage under lights", "a man is playing a guitar", "someone playing guitar at a concert"]),
    ("a bus is parked",
     ["a red double decker bus parked on the side of the road", "a bus parked next to a sidewalk"]),
]  # fmt: skip
EDGE_CORPORA = {
    "empty_prediction": [("", refs) if i == 2 else (p, refs) for i, (p, refs) in enumerate(CAPTIONS)],
    "no_overlap": [("zebra xylophone quartz", refs) if i == 4 else (p, refs) for i, (p, refs) in enumerate(CAPTIONS)],
    "identical": [(refs[-1], refs) for _, refs in CAPTIONS],
}
ALL_CORPORA = {"captions": CAPTIONS, **EDGE_CORPORA}
# raw text with capitals and punctuation, for the tokenize=True path
RAW = [
    ("A man is riding a horse.", ["A man rides a brown horse, along the beach!", "A person's horse (brown)."]),
    ("Two dogs don't play...", ["Two dogs aren't playing; they sleep.", "Dogs -- resting."]),
]


def split(corpus):
    """(predictions, reference lists) of a corpus of (prediction, references) pairs."""
    return [p for p, _ in corpus], [list(refs) for _, refs in corpus]


def tokens(corpus):
    predictions, references = split(corpus)
    return [p.split() for p in predictions], [[r.split() for r in refs] for refs in references]


def coco_inputs(corpus):
    predictions, references = split(corpus)
    return {i: refs for i, refs in enumerate(references)}, {i: [p] for i, p in enumerate(predictions)}


# ---------------------------------------------------------------------------------------------------------------------
# against pycocoevalcap (pure-Python scorers, no Java)


@pytest.mark.parametrize("corpus", ALL_CORPORA.values(), ids=ALL_CORPORA.keys())
def test_bleu_cider_rouge_equal_pycocoevalcap(corpus):
    pytest.importorskip("pycocoevalcap")
    from pycocoevalcap.bleu.bleu import Bleu as CocoBleu
    from pycocoevalcap.bleu.bleu_scorer import BleuScorer
    from pycocoevalcap.cider.cider import Cider as CocoCider
    from pycocoevalcap.rouge.rouge import Rouge as CocoRouge

    gts, res = coco_inputs(corpus)
    predictions, references = split(corpus)
    coco_bleu, _ = CocoBleu(4).compute_score(gts, res, verbose=0)
    ours = Bleu().compute(predictions=predictions, references=references, tokenize=False)
    for n in range(4):
        assert ours[f"bleu_{n + 1}"] == pytest.approx(coco_bleu[n], abs=1e-6, rel=1e-9)
    scorer = BleuScorer(n=4)
    for i in gts:
        scorer += (res[i][0], gts[i])
    scorer.compute_score(option="closest")
    ratio = (scorer._testlen + 1e-15) / (scorer._reflen + 1e-9)
    assert ours["length_ratio"] == pytest.approx(ratio, rel=1e-12)
    assert ours["brevity_penalty"] == pytest.approx(min(1.0, math.exp(1 - 1 / ratio)), rel=1e-12)

    coco_cider, coco_cider_per_example = CocoCider().compute_score(gts, res)
    assert Cider().compute(predictions=predictions, references=references, tokenize=False)["cider"] == pytest.approx(
        coco_cider, abs=1e-6
    )
    assert corpus_cider_d(*tokens(corpus))[1] == pytest.approx(list(coco_cider_per_example), abs=1e-6)

    coco_rouge, coco_rouge_per_example = CocoRouge().compute_score(gts, res)
    assert RougeL().compute(predictions=predictions, references=references, tokenize=False)["rouge_l"] == (
        pytest.approx(coco_rouge, abs=1e-6)
    )
    assert corpus_rouge_l(*tokens(corpus))[1] == pytest.approx(list(coco_rouge_per_example), abs=1e-6)


def test_scorers_equal_pycocoevalcap_on_random_corpora():
    """Random corpora over a 5-word vocabulary (many shared n-grams, ties in reference length, empty predictions)."""
    pytest.importorskip("pycocoevalcap")
    from pycocoevalcap.bleu.bleu import Bleu as CocoBleu
    from pycocoevalcap.cider.cider import Cider as CocoCider
    from pycocoevalcap.rouge.rouge import Rouge as CocoRouge

    rng = random.Random(0)
    for _ in range(100):
        hypotheses = [rng.choices("abcde", k=rng.randint(0, 7)) for _ in range(rng.randint(1, 6))]
        references = [
            [rng.choices("abcde", k=rng.randint(1, 7)) for _ in range(rng.randint(1, 4))] for _ in hypotheses
        ]
        gts = {i: [" ".join(ref) for ref in refs] for i, refs in enumerate(references)}
        res = {i: [" ".join(hyp)] for i, hyp in enumerate(hypotheses)}
        bleu = corpus_bleu(hypotheses, references)
        assert [bleu[f"bleu_{n}"] for n in range(1, 5)] == pytest.approx(CocoBleu(4).compute_score(gts, res, 0)[0])
        assert corpus_cider_d(hypotheses, references)[1] == pytest.approx(list(CocoCider().compute_score(gts, res)[1]))
        assert corpus_rouge_l(hypotheses, references)[1] == pytest.approx(list(CocoRouge().compute_score(gts, res)[1]))


# ---------------------------------------------------------------------------------------------------------------------
# hand-computed values


def test_bleu_hand_computed():
    # "a man rides a horse" vs {"a man riding a horse", "a rider"}: closest ref length 5; clipped matches
    # 1-grams a,a,man,horse = 4/5, 2-grams "a man","a horse" = 2/4, 3-grams 0/3, 4-grams 0/2
    tiny, small = 1e-15, 1e-9
    scores = corpus_bleu(
        [["a", "man", "rides", "a", "horse"]], [[s.split() for s in ("a man riding a horse", "a rider")]]
    )
    p = [(4 + tiny) / (5 + small), (2 + tiny) / (4 + small), tiny / (3 + small), tiny / (2 + small)]
    ratio = (5 + tiny) / (5 + small)
    bp = math.exp(1 - 1 / ratio)  # coco-caption applies it whenever the ratio is below 1, even by 2e-10
    assert scores["bleu_1"] == pytest.approx(p[0] * bp, rel=1e-12)
    assert scores["bleu_2"] == pytest.approx((p[0] * p[1]) ** 0.5 * bp, rel=1e-12)
    assert scores["bleu_3"] == pytest.approx((p[0] * p[1] * p[2]) ** (1 / 3) * bp, rel=1e-12)
    assert scores["bleu_4"] == pytest.approx(math.prod(p) ** 0.25 * bp, rel=1e-12)
    # the closest reference length decides the brevity penalty; on a tie the shorter one: |3-2| == |3-4| -> 2
    assert corpus_bleu([["x", "y", "z"]], [[["x", "y"], ["x", "y", "z", "w"]]])["brevity_penalty"] == 1.0
    short = corpus_bleu([["x", "y", "z"]], [[["x", "y", "z", "w", "v"], ["x"] * 9]])
    assert short["brevity_penalty"] == pytest.approx(math.exp(1 - 5 / 3), rel=1e-8)
    # clipping: "the the the the" against "the cat" matches one "the" out of four
    assert corpus_bleu([["the"] * 4], [[["the", "cat"]]])["bleu_1"] == pytest.approx(0.25, rel=1e-8)


def test_rouge_l_hand_computed():
    # LCS("a man rides a horse", "a man riding a horse") = 4 -> P = R = 0.8 -> F = 0.8
    score, _ = corpus_rouge_l(
        [["a", "man", "rides", "a", "horse"]], [[s.split() for s in ("a man riding a horse", "a rider")]]
    )
    assert score == pytest.approx(0.8, abs=1e-12)
    # precision and recall are maximised separately over the references: P = 1 (2nd ref), R = 1 (1st ref)
    score, _ = corpus_rouge_l([["a", "b", "c", "d"]], [[["a", "b"], list("abcdefgh")]])
    assert score == pytest.approx(1.0, abs=1e-12)
    # LCS("a b c d", "b d e") = 2 -> P = 1/2, R = 2/3, F = (1 + 1.44) P R / (R + 1.44 P)
    score, _ = corpus_rouge_l([["a", "b", "c", "d"]], [[["b", "d", "e"]]])
    assert score == pytest.approx(2.44 * 0.5 * (2 / 3) / (2 / 3 + 1.44 * 0.5), abs=1e-12)


def test_cider_hand_computed():
    # two examples, no n-gram shared between them: IDF = log 2 everywhere. "a b" == its reference: cosine 1 for
    # n = 1, 2, nothing for n = 3, 4 -> mean 0.5 -> x10 = 5
    score, per_example = corpus_cider_d([["a", "b"], ["c", "d"]], [[["a", "b"]], [["c", "d"]]])
    assert per_example == pytest.approx([5.0, 5.0], abs=1e-12) and score == pytest.approx(5.0, abs=1e-12)
    # an n-gram in every example's references has IDF log(2) - log(2) = 0 and counts for nothing: "x" in both
    _, per_example = corpus_cider_d([["x"], ["x", "c"]], [[["x"]], [["x", "c"]]])
    assert per_example[0] == 0.0
    # length penalty exp(-d^2 / 72) on a prediction one token longer than its only reference
    hyp, ref = ["p", "q", "r", "s", "t"], ["p", "q", "r", "s"]
    _, per_example = corpus_cider_d([hyp, ["z"]], [[ref], [["y"]]])
    assert per_example[0] == pytest.approx(10 * math.exp(-1 / 72) * _clipped_cosine_mean(hyp, ref), rel=1e-12)
    # a single example: IDF log(1) = 0 -> 0 (coco-caption behaves the same)
    assert Cider().compute(predictions=["a b c"], references=[["a b c"]])["cider"] == 0.0


def _clipped_cosine_mean(hyp, ref):
    """Mean over n = 1..4 of the cosine of two n-gram count vectors of the same IDF (all n-grams unique)."""
    total = 0.0
    for n in range(1, 5):
        h = {tuple(hyp[i : i + n]) for i in range(len(hyp) - n + 1)}
        r = {tuple(ref[i : i + n]) for i in range(len(ref) - n + 1)}
        total += len(h & r) / math.sqrt(len(h) * len(r)) if h and r else 0.0
    return total / 4


@pytest.mark.parametrize("metric_cls, key", [(Bleu, "bleu_4"), (Cider, "cider"), (RougeL, "rouge_l")])
def test_edge_cases(metric_cls, key):
    identical = [("a b c d e", ["a b c d e"]), ("f g h i j", ["f g h i j", "k"])]
    expected_identical = {"bleu_4": 1.0, "cider": 7.5, "rouge_l": 1.0}[key]  # CIDEr: mean of 10 and 10 / 2 refs
    assert metric_cls().compute(predictions=[p for p, _ in identical], references=[r for _, r in identical])[key] == (
        pytest.approx(expected_identical, abs=1e-6)
    )
    no_overlap = metric_cls().compute(predictions=["x y z", "p q"], references=[["a b c"], ["d e f"]])[key]
    assert no_overlap == pytest.approx(0.0, abs=1e-12)
    empty = metric_cls().compute(predictions=["", ""], references=[["a b c"], ["d e"]])[key]
    assert empty == 0.0


def test_tokenize_true_equals_ptb_tokens_then_tokenize_false():
    predictions, references = [p for p, _ in RAW], [r for _, r in RAW]
    tokenized_predictions = [" ".join(ptb_tokenize(p)) for p in predictions]
    tokenized_references = [[" ".join(ptb_tokenize(r)) for r in refs] for refs in references]
    for metric_cls in (Bleu, Cider, RougeL):
        raw = metric_cls().compute(predictions=predictions, references=references)
        pre = metric_cls().compute(predictions=tokenized_predictions, references=tokenized_references, tokenize=False)
        assert raw == pre
    assert tokenized_references[1][0] == "two dogs are n't playing they sleep"


def test_batches_and_single_adds_equal_one_call():
    predictions, references = split(CAPTIONS)
    for metric_cls in (Bleu, Cider, RougeL, ExactMatchAt1):
        metric = metric_cls()
        metric.add_batch(predictions=predictions[:4], references=references[:4])
        metric.add(prediction=predictions[4], reference=references[4])
        metric.add_batch(predictions=predictions[5:], references=references[5:])
        assert metric.compute() == metric_cls().compute(predictions=predictions, references=references)
    # numpy arrays and tuples are accepted like lists
    assert Bleu().compute(predictions=np.array(predictions), references=tuple(references)) == Bleu().compute(
        predictions=predictions, references=references
    )
    # a str reference is one reference
    assert Bleu().compute(predictions=["a b c d"], references=["a b c d"]) == Bleu().compute(
        predictions=["a b c d"], references=[["a b c d"]]
    )


# ---------------------------------------------------------------------------------------------------------------------
# tokeniser

PTB_CASES = {
    "A man is riding a horse.": "a man is riding a horse",
    "It's a dog's life, isn't it?": "it 's a dog 's life is n't it",
    "I can't go; we won't -- they'd've...": "i ca n't go we wo n't they 'd 've",
    "The U.S. flag costs $5.50 at 3:30 p.m.": "the u.s. flag costs $ 5.50 at 3:30 p.m.",
    "Two dogs (brown) play in the [snow].": "two dogs -lrb- brown -rrb- play in the -lsb- snow -rsb-",
    'He said "hello" to \u2018me\u2019!': "he said hello to me",
    "A black-and-white cat... on a mat!!": "a black-and-white cat on a mat !!",
    "Mr. Smith's kids' toys, 1,000 of them": "mr. smith 's kids toys 1,000 of them",
    "cannot \u2014 e-mail foo@bar.com 50% km/h": "can not e-mail foo@bar.com 50 % km/h",
    "  ÉCOLE\tcafé\nx_y  ": "école café x_y",
    # numbers head hyphenated words; a.b.c is one word
    "Cut the 1.5-inch pipe by the 1,000-year-old tree.": "cut the 1.5-inch pipe by the 1,000-year-old tree",
    "the a.b.c code": "the a.b.c code",
    # a single letter keeps its "." unless a capitalised sentence opener follows ("It", "The", ...)
    "The answer is B. It is not C.": "the answer is b it is not c.",
    # abbreviations keep their "." ("no." only before a number)
    "Option a. or option c., see fig. 3 etc.": "option a. or option c. see fig. 3 etc.",
    "Dr. Smith met Gen. Lee in Jan. at Acme Inc.": "dr. smith met gen. lee in jan. at acme inc.",
    "No. 5, or no.": "no. 5 or no",
    "--  ...  ; : , ' `": "",
}


@pytest.mark.parametrize("text, expected", PTB_CASES.items())
def test_ptb_tokenize_hand_written(text, expected):
    assert " ".join(ptb_tokenize(text)) == expected


def test_ptb_tokenize_matches_java_ptb_tokenizer():
    """Where our documented rules apply, the output is that of coco-caption's Java PTBTokenizer + removal list."""
    pytest.importorskip("pycocoevalcap")
    if meteor_metric._find_java() is None:
        pytest.skip("the Java PTBTokenizer needs `java` on PATH")
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    sentences = [*PTB_CASES, *(p for p, _ in RAW), *(r for _, refs in RAW for r in refs)]
    java = PTBTokenizer().tokenize({i: [{"caption": s}] for i, s in enumerate(sentences)})
    assert [" ".join(ptb_tokenize(s)) for s in sentences] == [java[i][0] for i in range(len(sentences))]


# ---------------------------------------------------------------------------------------------------------------------
# EM@1

SCANQA_NORMALIZATION = {
    "The brown chair.": "brown chair",
    "  Brown   chair  ": "brown chair",
    "chair .": "chair ",  # the space before a removed "." stays (the reference strips spaces first)
    "2": "two",
    "None": "zero",
    "23 chairs": "twenty-three chairs",
    "To the letf of the TV": "to left of TV",  # typo fix, "the" dropped, "tv" written "TV"
    "an armchair": "armchair",
    "mat2 no1": "mat no",
    "10 o' clock": "ten o'clock",
    "Walking backwards?": "walking backward",
    "café": "caf",  # non-ASCII characters are removed
}


@pytest.mark.parametrize("text, expected", SCANQA_NORMALIZATION.items())
def test_normalize_scanqa_answer(text, expected):
    assert normalize_scanqa_answer(text) == expected


def test_exact_match_at_1():
    predictions = ["The brown chair.", "2", "white cabinet", "on the left side", "table", ""]
    references = [
        ["brown chair", "chair"],  # exact after normalisation
        ["two", "three"],  # "2" -> "two"
        "white kitchen cabinet",  # no exact match; "whitecabinet" is not inside "whitekitchencabinet"
        ["left"],  # refined: "left" is inside "onleftside"
        ["coffee table", "desk"],  # refined: "table" inside "coffeetable"
        ["sofa"],  # empty prediction: refined counts it (contained in every reference), as the reference does
    ]
    scores = ExactMatchAt1().compute(predictions=predictions, references=references)
    assert scores == {"em1": pytest.approx(2 / 6), "em1_refined": pytest.approx(5 / 6)}
    raw = ExactMatchAt1().compute(predictions=predictions, references=references, normalize=False)
    assert raw["em1"] == 0.0  # "The brown chair." != "brown chair", "2" != "two"


# ---------------------------------------------------------------------------------------------------------------------
# errors

TEXT_METRICS = [Bleu, Cider, RougeL, ExactMatchAt1]
BAD_INPUTS = [
    (["a", "b"], [["a"]], ValueError, r"same length.*2 predictions and 1 references"),
    (["a"], [[]], ValueError, r"`references\[0\]` is an empty list"),
    (["a", 5], [["a"], ["b"]], TypeError, r"`predictions\[1\]` must be a str, got int"),
    (["a"], [["a", None]], TypeError, r"`references\[0\]\[1\]` must be a str, got NoneType"),
    (["a"], [7], TypeError, r"`references\[0\]` must be a str or a list of str, got int"),
    ("a b", [["a"]], TypeError, r"`predictions` must be a list"),
    ([], [], ValueError, r"`predictions` is empty"),
]


@pytest.mark.parametrize("metric_cls", TEXT_METRICS)
@pytest.mark.parametrize("predictions, references, error, message", BAD_INPUTS)
def test_bad_inputs_raise_naming_the_argument(metric_cls, predictions, references, error, message):
    with pytest.raises(error, match=message):
        metric_cls().compute(predictions=predictions, references=references)


ACCURACY_BAD_INPUTS = [
    ("ab", "ab", TypeError, r"`predictions` must be a list"),  # a str used to be scored character by character
    ([1.5, 2], [1, 2], TypeError, r"`predictions\[0\]` must be an int class id or a str answer, got float"),
    (["a", 1], ["a", "b"], TypeError, r"`predictions\[1\]` is int but `predictions\[0\]` is str"),
    ([1], ["1"], TypeError, r"`references\[0\]` is str but `predictions\[0\]` is int"),
    ([], [], ValueError, r"`predictions` is empty"),
    ([0, 1], [0], ValueError, r"same length.*2 predictions and 1 references"),
]


@pytest.mark.parametrize("predictions, references, error, message", ACCURACY_BAD_INPUTS)
def test_accuracy_rejects_bad_inputs(predictions, references, error, message):
    with pytest.raises(error, match=message):
        Accuracy().compute(predictions=predictions, references=references)


def test_accuracy_accepts_numpy_and_integral_floats_and_checks_single_adds():
    assert Accuracy().compute(predictions=[np.int64(1), 2.0, True], references=np.array([1, 2, 0])) == {
        "accuracy": pytest.approx(2 / 3)
    }
    with pytest.raises(TypeError, match=r"`predictions\[0\]` must be an int class id or a str answer, got NoneType"):
        Accuracy().add(prediction=None, reference=1)


@pytest.mark.parametrize("metric_cls", [Accuracy, *TEXT_METRICS])
def test_compute_without_examples_raises(metric_cls):
    metric = metric_cls()
    with pytest.raises(ValueError, match=r"has no examples.*`add` / `add_batch`"):
        metric.compute()
    text = metric_cls is not Accuracy
    metric.add_batch(predictions=["a b"] if text else [1], references=[["a b"]] if text else [1])
    metric.compute()
    with pytest.raises(ValueError, match=r"has no examples"):  # the first compute consumed the examples
        metric.compute()


@pytest.mark.parametrize("scorer", [corpus_bleu, corpus_cider_d, corpus_rouge_l])
@pytest.mark.parametrize("hypotheses, references", [([], []), ([["a"]], []), ([["a"]], [[]])])
def test_scoring_functions_reject_empty_or_mismatched_corpora(scorer, hypotheses, references):
    with pytest.raises(ValueError, match=r"`hypotheses` and `references` must be N >= 1 token lists"):
        scorer(hypotheses, references)


def test_bad_single_add_and_options_raise():
    with pytest.raises(TypeError, match=r"`prediction` must be a str, got int"):
        Bleu().add(prediction=3, reference="a")
    with pytest.raises(ValueError, match=r"`reference` is an empty list"):
        Bleu().add(prediction="a", reference=[])
    with pytest.raises(TypeError, match=r"`tokenize` must be a bool, got str"):
        Bleu().compute(predictions=["a"], references=["a"], tokenize="no")
    with pytest.raises(TypeError, match=r"`normalize` must be a bool, got int"):
        ExactMatchAt1().compute(predictions=["a"], references=["a"], normalize=1)


# ---------------------------------------------------------------------------------------------------------------------
# METEOR: plumbing with a fake jar (always runs), numbers with the real jar (needs Java)

FAKE_METEOR = """\
import sys
if "crash" in sys.argv[0]:
    print("Exception in thread main: java.lang.OutOfMemoryError", file=sys.stderr)
    sys.exit(3)
for line in sys.stdin:
    fields = line.rstrip("\\n").split(" ||| ")
    if fields[0] == "SCORE":  # stats: number of hypothesis tokens, number of references
        print(len(fields[-1].split()), len(fields) - 2, flush=True)
    elif "garbage" in sys.argv[0]:
        print(*["warning: not a score"] * len(fields), sep="\\n", flush=True)
    else:  # EVAL: per example tokens / 10 + references / 100, then their sum
        scores = [int(s.split()[0]) / 10 + int(s.split()[1]) / 100 for s in fields[1:]]
        print(*scores, sum(scores), sep="\\n", flush=True)
"""


def _fake_java(tmp_path: Path, name: str) -> str:
    script = tmp_path / name
    script.write_text(f"#!{sys.executable}\n{FAKE_METEOR}")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script)


@pytest.fixture
def fake_meteor(tmp_path, monkeypatch):
    """`Meteor` running a Python stand-in for java + the jar that speaks the same line protocol."""
    monkeypatch.setattr(meteor_metric, "_find_java", lambda: _fake_java(tmp_path, "java"))
    monkeypatch.setattr(meteor_metric, "_find_jar", lambda: tmp_path / "meteor-1.5.jar")
    return Meteor


def test_meteor_protocol_restart_and_close(fake_meteor):
    # "|||" and newlines never reach the protocol: "x ||| y\nz" -> "x y z" (3 tokens), "s ||| t" -> "s t" (1 ref)
    inputs = {"predictions": ["a man rides", "x ||| y\nz"], "references": [["r"], ["s ||| t", "u"]], "tokenize": False}
    expected = {"meteor": pytest.approx((0.3 + 0.01) + (0.3 + 0.02))}
    metric = fake_meteor()
    assert metric.compute(**inputs) == expected
    process = metric._process._process
    process.kill()
    process.wait()
    assert metric.compute(**inputs) == expected  # a dead child is replaced by a new one
    restarted = metric._process._process
    assert restarted.pid != process.pid
    metric.close()
    assert restarted.returncode == 0  # stdin closed -> it exited and was reaped: no zombie
    with fake_meteor() as scoped:
        assert scoped.compute(predictions=["a b"], references=["c"]) == {"meteor": pytest.approx(0.21)}
    assert scoped._process._process.returncode == 0


def test_meteor_process_serialises_concurrent_callers(tmp_path):
    process = meteor_metric._MeteorProcess(_fake_java(tmp_path, "java"), tmp_path / "meteor-1.5.jar")
    results = {}

    def score(n: int) -> None:
        results[n] = process.score([" ".join(["w"] * n)] * 20, [["r"] * n] * 20)

    threads = [threading.Thread(target=score, args=(n,)) for n in range(1, 6)]
    [thread.start() for thread in threads]
    [thread.join() for thread in threads]
    process.close()
    for n in range(1, 6):
        assert results[n][1] == pytest.approx([n / 10 + n / 100] * 20)
        assert results[n][0] == pytest.approx(20 * (n / 10 + n / 100))


def test_meteor_reports_a_dying_or_garbled_java_process(tmp_path):
    process = meteor_metric._MeteorProcess(_fake_java(tmp_path, "crash_java"), tmp_path / "meteor-1.5.jar")
    with pytest.raises(RuntimeError, match=r"(?s)exit code 3.*OutOfMemoryError"):
        process.score(["a"], [["a"]])
    assert not process.alive
    process = meteor_metric._MeteorProcess(_fake_java(tmp_path, "garbage_java"), tmp_path / "meteor-1.5.jar")
    with pytest.raises(RuntimeError, match=r"unexpected METEOR output.*warning: not a score"):
        process.score(["a"], [["a"]])
    assert not process.alive and process._process.returncode is not None  # stopped: the next call starts afresh


def test_meteor_unavailable_errors_say_what_is_missing(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setattr(meteor_metric, "_JAR_PACKAGE", "no_such_package_for_meteor")
    with pytest.raises(MeteorUnavailableError, match=r"(?s)`java`.*install.*pip install no_such_package_for_meteor"):
        Meteor()
    assert "java" in meteor_unavailable_reason()


@pytest.fixture(scope="module")
def meteors():
    """(ours, pycocoevalcap's), built together so the two JVMs load their paraphrase tables in parallel."""
    reason = meteor_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    from pycocoevalcap.meteor.meteor import Meteor as CocoMeteor

    ours, coco = Meteor(), CocoMeteor()
    yield ours, coco
    ours.close()
    coco.meteor_p.kill()
    coco.meteor_p.wait()


@pytest.mark.parametrize("corpus", ALL_CORPORA.values(), ids=ALL_CORPORA.keys())
def test_meteor_equals_pycocoevalcap(meteors, corpus):
    ours, coco = meteors
    gts, res = coco_inputs(corpus)
    coco_score, _ = coco.compute_score(gts, res)
    predictions, references = split(corpus)
    assert ours.compute(predictions=predictions, references=references, tokenize=False)["meteor"] == pytest.approx(
        coco_score, abs=1e-4
    )


def test_meteor_child_is_reaped_on_close(meteors):
    ours, _ = meteors
    process = ours._process._process
    ours.close()
    assert process.returncode is not None and not os.path.exists(f"/proc/{process.pid}/status")
