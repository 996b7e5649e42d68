"""Pure-Python stand-in for coco-caption's tokenisation: Stanford PTBTokenizer 3.4.1 with `-lowerCase` (Java),
then its punctuation-removal list. Used by the caption metrics (`videoadapt.caption_metrics`) by default.

    >>> ptb_tokenize("A man (left) isn't riding... a horse!")
    ['a', 'man', '-lrb-', 'left', '-rrb-', 'is', "n't", 'riding', 'a', 'horse']
"""

import re


__all__ = ["PTB_REMOVED_TOKENS", "ptb_tokenize"]

# coco-caption's list of PTB tokens dropped after tokenisation (its bracket names are upper case, but the Java
# tokenizer runs with -lowerCase and writes "-lrb-", so brackets are never actually dropped: we keep that behaviour)
PTB_REMOVED_TOKENS = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"]
)
_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
_UNICODE_PUNCTUATION = str.maketrans(
    {"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2013": "--", "\u2014": "--", "\u2026": "..."}
)
_NUMBER = r"\d+(?:[.,:]\d+)+"  # numbers with separators: 5.50, 1,000, 3:30
_TOKEN = re.compile(
    r"(?:[^\W\d_]\.){2,}(?!\w)"  # abbreviations with inner periods: u.s., e.g., p.m. (but a.b.c is one word)
    rf"|{_NUMBER}(?:-(?:{_NUMBER}|\w+))*"  # ... also as the head of a hyphenated word: 1.5-inch, 1,000-year-old
    r"|\w+(?:[-'./@]\w+)*"  # words, with inner hyphens, apostrophes, periods, slashes: e-mail, o'clock, km/h
    r"|\.{2,}|-{2,}|[!?]+|`+|'+"  # punctuation runs: ..., --, !!, ?!, ``, ''
    r"|\S"  # any other character on its own
)
_CLITIC = re.compile(r"^(.+?)(n't|'s|'re|'ve|'ll|'d|'m)$")
_SPLIT_WORDS = {"cannot": ("can", "not"), "gonna": ("gon", "na"), "gotta": ("got", "ta"), "wanna": ("wan", "na")}

# Words that keep a directly following "." as part of the token ("etc.", "dr.", "jan."), as the Java tokenizer's
# abbreviation lists do (checked against the 3.4.1 jar): titles, months, days, company and address words, ...
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr drs prof profs sen sens rep reps atty attys lt col gen messrs gov govs adm rev maj sgt cpl pvt "
    "capt st ste ave pres lieut hon brig cmdr comdr pfc spc supt supts det mme mlle mt ft vs cf "
    "jan feb mar apr jun jul aug sep sept oct nov dec mon tue tues wed thu thurs fri "
    "ala ariz calif colo conn ct dak fla ga ind kan kans ky md mich minn mo mont neb nev okla tenn va vt wis wyo "
    "inc co cos corp ltd plc pty ptys pte ptes bancorp dept bhd assn univ intl sys invt elec natl mfg mtg "
    "tel est ext sq jr sr bros esq blvd rd etc al seq ph.d ed.d".split()
)
_CAPITALISED_ABBREVIATIONS = frozenset("ill la mass miss ore pa tex wash del ark az".split())  # only "Ill." etc.
_ABBREVIATIONS_BEFORE_NUMBERS = frozenset("no nos fig figs ca art pp op prop bldg".split())  # "no. 5", "fig. 3"
# A single letter keeps its "." ("vitamin c.", "option b.") unless one of these capitalised words follows: then the
# "." is taken as a sentence end ("It is B. It is C." -> it is b it is c.)
_SENTENCE_STARTERS = frozenset(
    "a about according additionally after an as at but earlier he her here however if in it last many more now once "
    "one other our she since so some such that the their then there these they this we what when while yet you".split()
)
_NEXT_WORD = re.compile(r"\s+([A-Z][A-Za-z]*)(?=\s|$)")
_NEXT_DIGIT = re.compile(r"\s*\d")


def _split_clitics(word: str) -> list[str]:
    """PTB splits "n't" and "'s 're 've 'll 'd 'm" off the end of a word: "they'd've" -> they 'd 've."""
    if word in _SPLIT_WORDS:
        return list(_SPLIT_WORDS[word])
    match = _CLITIC.match(word)
    return [*_split_clitics(match.group(1)), match.group(2)] if match else [word]


def _keeps_period(word: str, text: str, end: int) -> bool:
    """Whether `word` (original case), directly followed by the "." at text[end - 1], takes it as an abbreviation."""
    lower = word.lower()
    if lower in _ABBREVIATIONS or (word[0].isupper() and lower in _CAPITALISED_ABBREVIATIONS):
        return True
    if lower in _ABBREVIATIONS_BEFORE_NUMBERS:
        return _NEXT_DIGIT.match(text, end) is not None
    if len(word) == 1 and word.isascii() and word.isalpha():
        following = _NEXT_WORD.match(text, end)
        return following is None or following.group(1).lower() not in _SENTENCE_STARTERS
    return False


def _raw_tokens(text: str) -> list[str]:
    """Tokens before punctuation removal: words, clitics, numbers, bracket names and punctuation runs."""
    text = text.translate(_UNICODE_PUNCTUATION)
    tokens: list[str] = []
    previous_word, previous_end = "", -1  # the last word-like piece and where it ended
    for match in _TOKEN.finditer(text):
        piece, lower = match.group(), match.group().lower()
        if piece == "." and match.start() == previous_end and _keeps_period(previous_word, text, match.end()):
            tokens[-1] += "."  # "etc." / "dr." / "b." stay one token
        elif piece[0] in "\"'`":  # quotes become PTB `` / '' / ` / ', all removed
            tokens.append("''" if piece == '"' else piece)
        elif piece.startswith(".."):
            tokens.append("...")
        elif piece in _BRACKETS:
            tokens.append(_BRACKETS[piece])
        elif piece[0].isalnum() or piece[0] == "_":
            tokens.extend(_split_clitics(lower))
            previous_word, previous_end = piece, match.end()
        else:
            tokens.append(piece)
    return tokens


def ptb_tokenize(text: str) -> list[str]:
    """Pure-Python approximation of coco-caption's tokenisation (Stanford PTBTokenizer 3.4.1 with `-lowerCase`,
    then its punctuation-removal list `PTB_REMOVED_TOKENS`).

    Lower case; split on whitespace and around punctuation, keeping together words with inner hyphens, apostrophes,
    periods, slashes or "@" (e-mail, o'clock, km/h, a.b.c), numbers with inner ".,:" (5.50, 1,000, 3:30) and
    hyphenated words that start with one (1.5-inch), letter-period abbreviations (u.s., p.m.); the Java tokenizer's
    abbreviations keep their "." (titles "dr.", months "jan.", "etc.", "inc.", "no." before a number, ...), and so
    does a single letter ("option b.") unless a capitalised sentence opener such as "It" or "The" follows; split
    clitics as PTB does ("isn't" -> is n't, "can't" -> ca n't, "they'd" -> they 'd, "cannot" -> can not); quotes,
    ".", ",", ";", ":", "?", "!", "-", "--", "..." are dropped; runs such as "!!" or "?!" are kept, as are brackets
    (written -lrb-, -rrb-, ...). Differs from the Java tokenizer on rare forms ("rock 'n' roll", "y'all", "at&t",
    URLs, "#tags", currency signs other than "$") and where Java looks across lines (a caption ending in "b." when the
    next caption in its batch starts with "It").

    Example:
        >>> ptb_tokenize("It's a dog's life, isn't it?")
        ['it', "'s", 'a', 'dog', "'s", 'life', 'is', "n't", 'it']
    """
    return [token for token in _raw_tokens(text) if token not in PTB_REMOVED_TOKENS]
