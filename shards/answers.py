r"""VQA answers in the benchmark's answer space: the official VQAv2 answer processing (GT-Vision-Lab/VQA,
vqaEval.py), shared by training (VQA targets) and evaluation (predictions and, when the humans disagree, the
human answers). It lives here, in the shard contract, because training must not import eval.

`normalize_answer(text)`: punctuation rules, then lower case, number words to digits ("two" -> "2"), articles
dropped, the contractions table. "Yes." -> "yes", "Two." -> "2", "The red one" -> "red one".

The official code runs on Python 2 with its answers as unicode strings, and that is the behaviour kept here,
also for non-ASCII answers:
- ``\d`` in its patterns matches the ASCII digits only (Python 2 patterns are compiled without re.UNICODE),
  so "3.٥" loses its period and "١,٢" does not count as a digit comma; we compile with re.ASCII;
- ``unicode.lower()`` of Python 2 is the simple one-to-one case mapping, where Python 3's ``str.lower()`` uses
  the full mapping; the two differ on one character only, U+0130 (capital I with dot above), which Python 2
  maps to "i" and Python 3 to "i" plus a combining dot. We map it to "i" first.
Characters the Python 2.7 Unicode database (5.2) does not know are lower-cased by Python 3's newer tables;
no VQAv2 answer contains one.

One process holds the tables below (a few kilobytes); nothing grows with the number of answers.
"""
from __future__ import annotations

import re

# The official table, straight apostrophes as in the current official code. Its oddities are kept on purpose:
# keys with capitals ("Im", "Ive", ...) can never match because answers are lower-cased first, and
# "somebody'd" maps to "somebodyd".
CONTRACTIONS: dict[str, str] = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's",
    "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll",
    "let's": "let's", "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
    "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't",
    "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're",
    "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}
NUMBER_WORDS: dict[str, str] = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
ARTICLES = frozenset({"a", "an", "the"})
# Neither "'" nor ":" nor "." is here: apostrophes must survive for the contractions table, periods have their
# own rule below.
PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`",
               ",", "?", "!")
_DIGIT_COMMA_DIGIT = re.compile(r"(\d)(,)(\d)", re.ASCII)
# The official pattern is "(?!<=\d)(\.)(?!\d)": its first group is a negative *lookahead* for the text "<=" and
# a digit (a typo for a lookbehind), which never matches in front of a ".". The effective rule is therefore
# "remove every period not followed by a digit" ("3.5" keeps its period, "2." loses it), and we keep the same
# pattern so the behaviour is identical.
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"(?!<=\d)(\.)(?!\d)", re.ASCII)
# The official call is `periodStrip.sub("", text, re.UNICODE)`: the flag lands in the `count` argument, so at
# most re.UNICODE == 32 periods are removed. Kept for fidelity; no real answer has that many.
_PERIOD_COUNT = int(re.UNICODE)


def process_punctuation(text: str) -> str:
    """Official punctuation rule.

    Each punctuation mark is deleted if it stands next to a space somewhere in the (original) answer, or if
    the answer contains a comma between two digits ("1,000" -> "1000"); otherwise it becomes a space
    ("black/white" -> "black white"). Then periods not followed by a digit are removed.
    """
    out = text
    has_digit_comma = _DIGIT_COMMA_DIGIT.search(text) is not None
    for p in PUNCTUATION:
        if (p + " " in text or " " + p in text) or has_digit_comma:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_NOT_BEFORE_DIGIT.sub("", out, _PERIOD_COUNT)


def process_digit_article(text: str) -> str:
    """Lower-case, split on whitespace, number words -> digits, drop articles, expand the contractions table."""
    words = [NUMBER_WORDS.get(w, w) for w in text.replace("\u0130", "i").lower().split()]
    words = [CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES]
    return " ".join(words)


def normalize_answer(text: str) -> str:
    """Full official normalisation (what both sides get when the human answers disagree)."""
    return process_digit_article(process_punctuation(text))
