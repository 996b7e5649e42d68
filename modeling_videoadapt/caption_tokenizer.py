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
_TOKEN = re.compile(
    r"(?:[^\W\d_]\.){2,}"  # abbreviations with inner periods: u.s., e.g., p.m.
    r"|\d+(?:[.,:]\d+)+"  # numbers with separators: 5.50, 1,000, 3:30
    r"|\w+(?:[-'./@]\w+)*"  # words, with inner hyphens, apostrophes, periods, slashes: e-mail, o'clock, km/h
    r"|\.{2,}|-{2,}|[!?]+|`+|'+"  # punctuation runs: ..., --, !!, ?!, ``, ''
    r"|\S"  # any other character on its own
)
_CLITIC = re.compile(r"^(.+?)(n't|'s|'re|'ve|'ll|'d|'m)$")
_SPLIT_WORDS = {"cannot": ("can", "not"), "gonna": ("gon", "na"), "gotta": ("got", "ta"), "wanna": ("wan", "na")}
_TITLES = frozenset(["mr", "mrs", "ms", "dr", "prof", "st", "jr", "sr", "vs"])


def _split_clitics(word: str) -> list[str]:
    """PTB splits "n't" and "'s 're 've 'll 'd 'm" off the end of a word: "they'd've" -> they 'd 've."""
    if word in _SPLIT_WORDS:
        return list(_SPLIT_WORDS[word])
    match = _CLITIC.match(word)
    return [*_split_clitics(match.group(1)), match.group(2)] if match else [word]


def _raw_tokens(text: str) -> list[str]:
    """Tokens before punctuation removal: words, clitics, numbers, bracket names and punctuation runs."""
    tokens: list[str] = []
    for piece in _TOKEN.findall(text.lower().translate(_UNICODE_PUNCTUATION)):
        if piece == "." and tokens and tokens[-1] in _TITLES:  # "mr." stays one token
            tokens[-1] += "."
        elif piece[0] in "\"'`":  # quotes become PTB `` / '' / ` / ', all removed
            tokens.append("''" if piece == '"' else piece)
        elif piece.startswith(".."):
            tokens.append("...")
        elif piece in _BRACKETS:
            tokens.append(_BRACKETS[piece])
        elif piece[0].isalnum() or piece[0] == "_":
            tokens.extend(_split_clitics(piece))
        else:
            tokens.append(piece)
    return tokens


def ptb_tokenize(text: str) -> list[str]:
    """Pure-Python approximation of coco-caption's tokenisation (Stanford PTBTokenizer 3.4.1 with `-lowerCase`,
    then its punctuation-removal list `PTB_REMOVED_TOKENS`).

    Lower case; split on whitespace and around punctuation, keeping together words with inner hyphens, apostrophes,
    periods, slashes or "@" (e-mail, o'clock, km/h), numbers with inner ".,:" (5.50, 1,000, 3:30), letter-period
    abbreviations (u.s., p.m.) and a few titles ("mr.", "dr.", "st."); split clitics as PTB does ("isn't" -> is n't,
    "can't" -> ca n't, "they'd" -> they 'd, "cannot" -> can not); quotes, ".", ",", ";", ":", "?", "!", "-", "--",
    "..." are dropped; runs such as "!!" or "?!" are kept, as are brackets (written -lrb-, -rrb-, ...). Differs
    from the Java tokenizer on rare forms (its abbreviation dictionary, "rock 'n' roll", "y'all", "at&t").

    Example:
        >>> ptb_tokenize("It's a dog's life, isn't it?")
        ['it', "'s", 'a', 'dog', "'s", 'life', 'is', "n't", 'it']
    """
    return [token for token in _raw_tokens(text) if token not in PTB_REMOVED_TOKENS]
