"""Pure answer parsing shared by the benchmark tasks: option letters, exact numbers, TabMWP's normal form and
ChartQA's relaxed accuracy. No I/O, no task state: each function maps strings to strings, numbers or booleans.
"""

from __future__ import annotations

import re
from decimal import Decimal
from fractions import Fraction

# -- option letters --------------------------------------------------------------------------------------------
_OPTION_WORD = re.compile(r"^(?:the\s+)?(?:correct\s+)?(?:option|choice)\s*(?:is\s*)?:?\s*", re.IGNORECASE)
_BARE_LETTER = re.compile(r"\(?([A-Za-z])\)?[.:]?")
_PAREN_LETTER = re.compile(r"\(([A-Za-z])\)")
_LETTER_THEN_TEXT = re.compile(r"([A-Za-z])[.:)]\s")


def option_letter(text: str) -> str | None:
    """The option letter an answer names, upper-case, or None.

    'B', '(b)', 'B.', 'B)', 'B: 30°', '(B) 30°', 'Option B', 'The correct option is (C)' name a letter;
    'A triangle' or 'A.M.' do not (a letter must stand alone, be bracketed, or be followed by '.', ':' or ')'
    and a space).
    """
    t = _OPTION_WORD.sub("", text.strip())
    m = _BARE_LETTER.fullmatch(t) or _PAREN_LETTER.match(t) or _LETTER_THEN_TEXT.match(t)
    return m.group(1).upper() if m else None


def letter_index(letter: str) -> int:
    return ord(letter.upper()) - ord("A")


def fold_text(text: str) -> str:
    """Case-, space- and final-period-insensitive form for comparing answer text with option text."""
    return re.sub(r"\s+", " ", text).strip().rstrip(".").strip().lower()


# -- numbers ---------------------------------------------------------------------------------------------------
_PLAIN_NUMBER = re.compile(r"([-+]?)\$?((?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)")
_FRACTION = re.compile(r"([-+]?\d+)\s*/\s*(\d+)")
NUMBER_WORDS = {
    w: i
    for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
        "sixteen seventeen eighteen nineteen twenty".split()
    )
}


def parse_number(text: str) -> Fraction | None:
    """An exact number from '1000', '1,000', '-2.5', '$3', '.5', '3/4'; None for anything else.

    Thousands separators must be well placed ('1,00' is not a number). Exact fractions keep tolerance checks free
    of binary floating-point error (0.315 is within 5% of 0.3).
    """
    t = text.strip().replace("\u2212", "-")
    m = _PLAIN_NUMBER.fullmatch(t)
    if m:
        value = Fraction(Decimal(m.group(2).replace(",", "")))
        return -value if m.group(1) == "-" else value
    m = _FRACTION.fullmatch(t)
    if m and int(m.group(2)) != 0:
        return Fraction(int(m.group(1)), int(m.group(2)))
    return None


def format_number(value: Fraction) -> str:
    """Canonical text of an exact number: '1000', '-2.5', '0.75'; a non-terminating one as a float."""
    if value.denominator == 1:
        return str(value.numerator)
    d = value.denominator
    while d % 2 == 0:
        d //= 2
    while d % 5 == 0:
        d //= 5
    if d != 1:
        return repr(float(value))
    text = format(Decimal(value.numerator) / Decimal(value.denominator), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def parse_integer(text: str) -> int | None:
    """An integer from '3', '+3', '3.0', '1,000' or a number word up to twenty; None for 2.5 or text."""
    t = text.strip().lower()
    if t in NUMBER_WORDS:
        return NUMBER_WORDS[t]
    value = parse_number(t)
    if value is None or value.denominator != 1:
        return None
    return int(value)


_LEADING_INTEGER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.0+)?(?!\d|,\d|\.\d)")


def leading_integer(text: str) -> int | None:
    """The integer an answer starts with, whatever follows: '7 objects', '7.', 'three cubes', '1,000 balls' and
    '3.0' name one; '2.5 objects', 'many' and 'objects: 7' do not (CLEVR-Math's reference scorer reads the integer
    right after 'Answer:')."""
    t = text.strip().replace("\u2212", "-")
    first = t.split(maxsplit=1)[0].rstrip(".,;:!").lower() if t else ""
    if first in NUMBER_WORDS:
        return NUMBER_WORDS[first]
    m = _LEADING_INTEGER.match(t)
    return None if m is None else parse_integer(m.group(0))


# -- TabMWP ----------------------------------------------------------------------------------------------------
_TABMWP_NUMERIC = re.compile(r"[-+]?[\d,./]+")
_NUMBER_THEN_WORDS = re.compile(r"(\$?[-+]?[\d,./]*\d)\s+[A-Za-z][A-Za-z .]*")
_LATEX_FRAC = re.compile(r"\$?\\d?frac\{([\d.,\-]+)\}\{([\d.,]+)\}\$?")


def tabmwp_number(text: str) -> str | None:
    """TabMWP's number rule: drop '$' and a trailing ',./', commas; integers as is, fractions and decimals
    rounded to 3 places, trailing '.0' removed. None when the text is not a number."""
    t = re.sub(r"^\$", "", text)
    t = re.sub(r"[,./]$", "", t)
    if not _TABMWP_NUMERIC.fullmatch(t):
        return None
    t = t.replace(",", "")
    try:
        if re.fullmatch(r"[-+]?\d+", t):
            return str(int(t))
        if "/" in t:
            num, den = t.split("/")
            number = round(float(num) / float(den), 3)
        else:
            number = round(float(t), 3)
    except (ValueError, ZeroDivisionError):
        return None  # '1.2.3', '3/0', '1/2/3': no number; compared as text
    return re.sub(r"\.0+$", "", str(number))


def tabmwp_normalize(text: str, unit: str | None = None) -> str:
    """TabMWP's answer normal form (its evaluation script's normalize_answer, made total and unit-aware).

    '1,000' -> '1000', '3/4' and '0.750' -> '0.75', '$56.4' -> '56.4', '5 cm' (unit cm) -> '5'; text answers
    lose the unit and compare case-insensitively. Two deliberate extensions: the unit is stripped before the
    number rule too ('5.50 cm' -> '5.5', where the script kept '5.50'), and without a known unit a number followed
    by words ('5 apples') is that number.
    """
    t = _LATEX_FRAC.sub(r"\1/\2", text.strip()).replace("\u2212", "-")
    t = re.sub(r"(?<![AaPp]\.[Mm])\.$", "", t).strip()  # a final period, but not the one in 'A.M.'/'P.M.'
    number = tabmwp_number(t)
    if number is not None:
        return number
    if unit and unit in t:
        t = t.replace(unit, "").strip()
        number = tabmwp_number(t)
        if number is not None:
            return number
    m = _NUMBER_THEN_WORDS.fullmatch(t)
    if m:
        number = tabmwp_number(m.group(1))
        if number is not None:
            return number
    return re.sub(r"\s+", " ", t).lower()


# -- ChartQA ---------------------------------------------------------------------------------------------------
RELAXED_TOLERANCE = Fraction(5, 100)


def chart_number(text: str) -> Fraction | None:
    """A ChartQA number: like parse_number, and a trailing '%' divides by 100 (as the benchmark's scorer does)."""
    t = text.strip()
    if t.endswith("%"):
        value = parse_number(t[:-1])
        return None if value is None else value / 100
    return parse_number(t)


def relaxed_match(predicted: str, gold: str, tolerance: Fraction = RELAXED_TOLERANCE) -> bool:
    """ChartQA's relaxed accuracy: numbers within `tolerance` (relative, inclusive) of the gold number, anything
    else a case-insensitive exact match. A gold of 0 needs exactly 0 (the scorer's relative change is undefined
    there; it fell back to comparing strings, which failed '0.0' against '0')."""
    p, g = chart_number(predicted), chart_number(gold)
    if p is not None and g is not None:
        if g == 0:
            return p == 0
        return abs(p - g) <= tolerance * abs(g)
    return fold_text(predicted) == fold_text(gold)


# -- teacher rationales ----------------------------------------------------------------------------------------
def with_answer_line(rationale: str | None, answer_line: str) -> str | None:
    """A release's own solution text as a warm-up CoT target: it must end in the answer line the extractor reads
    (the solutions of TabMWP and M3CoT state the answer in prose). None when there is no solution text."""
    if rationale is None or not str(rationale).strip():
        return None
    text = str(rationale).rstrip()
    if text.splitlines()[-1].strip() == answer_line:
        return text
    return f"{text}\n{answer_line}"
