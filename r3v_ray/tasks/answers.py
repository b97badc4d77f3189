"""Pure answer parsing shared by every task: the answer grammar (the final answer line, unwrapped; exactly one
option or value, else no answer: docs/data.md), option letters, exact numbers, TabMWP's normal form and ChartQA's
relaxed accuracy. No I/O, no task state: each function maps strings to strings, numbers or booleans.
"""

from __future__ import annotations

import ast
import operator
import re
from decimal import Decimal
from fractions import Fraction

# -- the final answer line (docs/data.md: the answer grammar) ----------------------------------------------------
# Full-width ASCII forms ('Ｂ', '：', '５') and the ideographic space read as their ASCII selves.
_FULL_WIDTH = {c: c - 0xFEE0 for c in range(0xFF01, 0xFF5F)} | {0x3000: 0x20}
# 'Answer:', '**Answer:**', '**Answer**:', 'Final answer:', 'ANSWER :' (after halfwidth); not 'answers:'
_MARKER = re.compile(r"(?<![A-Za-z])answer\s*(?:\*\*|__|\*|_)?\s*:", re.IGNORECASE)
_WRAPPER = re.compile(r"\\(?:boxed|fbox|text|textbf|mathrm|mathbf)\s*\{")
_LATEX_FRACTION = re.compile(r"\\d?frac\{([^{}]*)\}\{([^{}]*)\}")
_LEAD_IN = re.compile(
    r"^(?:(?:so|thus|therefore|hence)\s*,?\s*)?(?:the\s+)?(?:correct\s+|final\s+|right\s+|best\s+)?"
    r"(?:answer|option|choice)\s*(?:is|would\s+be|should\s+be|=|:)\s*",
    re.IGNORECASE,
)
_CONNECTOR = r"(?i:/|,|;|&|\bor\b|\band\b)"
_ALTERNATIVES = re.compile(rf"\s*{_CONNECTOR}\s*")
# Capital letters standing next to a connector ('B or C', 'either B/C'); a lower-case 'a' there is an article.
_LETTER_BEFORE_CONNECTOR = re.compile(rf"(?<![\w'’])\(?([A-Z])\)?(?=\s*{_CONNECTOR})")
_LETTER_AFTER_CONNECTOR = re.compile(rf"{_CONNECTOR}\s*\(?([A-Z])\)?(?![\w'’])")
_BRACKETED_LETTER = re.compile(r"\(([A-Za-z])\)")
# A capital letter standing alone, as an option letter does: not the pronoun 'I', not the article in 'A dog'.
_LETTER_WORD = re.compile(r"(?<![\w'’.])(?!I\b)([A-Z])(?![\w'’]|\.\w)(?<!A(?=\s+[a-z]))")
MAX_SENTENCE_WORDS = 16  # an answer line longer than this is reasoning, not "a short sentence around an answer"
MAX_ANSWER_CHARS = 2000  # longer than any option text; bounds the work (and a number's digits) an answer can cost


def halfwidth(text: str) -> str:
    return text.translate(_FULL_WIDTH)


def final_answer_text(text: str | None) -> str | None:
    """The content of the final answer line, unwrapped; None when there is no answer.

    The final answer line is the last 'Answer:' marker (any case, full-width colon, markdown emphasis) and the rest
    of its line. When that rest is empty the answer may stand alone on the next line, but only if that line ends
    the text ('**Answer:**\n\nB'); an empty or cut-off final line is no answer, never an earlier 'Answer:' line.
    """
    if not text:
        return None
    t = halfwidth(text)
    markers = list(_MARKER.finditer(t))
    if not markers:
        return None
    first, _, after = t[markers[-1].end():].partition("\n")
    if not first.strip():
        rest = [line for line in after.splitlines() if line.strip()]
        first = rest[0] if len(rest) == 1 else ""
    return unwrap(first) if len(first) <= MAX_ANSWER_CHARS else None


def _strip_wrappers(text: str) -> str | None:
    """'\\boxed{4}' -> '4' (nested braces kept balanced); None when a wrapper is cut off before its '}'."""
    while True:
        m = _WRAPPER.search(text)
        if m is None:
            return text
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth:
            return None
        text = text[: m.start()] + text[m.end() : i - 1] + text[i:]


def unwrap(content: str | None) -> str | None:
    """An answer without its dressing: full-width forms, '\\boxed{}' / '\\text{}', '$...$', '\\frac{a}{b}' (as
    'a/b'), markdown emphasis and code marks; None when nothing is left or a wrapper is cut off."""
    if content is None:
        return None
    t = _strip_wrappers(halfwidth(content))
    if t is None:
        return None
    t = _LATEX_FRACTION.sub(r"\1/\2", t).replace("\\%", "%").replace("\\$", "$")
    t = t.replace("\\(", "").replace("\\)", "").replace("\\[", "").replace("\\]", "")
    t = t.replace("**", "").replace("__", "").replace("`", "")
    t = re.sub(r"^\$([^$]+)\$", r"\1", t.strip())  # '$4$.': inline math around the answer
    t = t.strip().strip("*_").strip()
    return t or None


def strip_lead_in(text: str) -> str:
    """'The correct answer is (B).' -> '(B).'; 'So the answer is 4' -> '4'."""
    return _LEAD_IN.sub("", text.strip(), count=1).strip()


_ARITHMETIC = re.compile(r"[\d\s.+\-*/x×÷()]+")
_OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def arithmetic_value(text: str) -> Fraction | None:
    """The exact value of plain arithmetic ('6 - 2', '2 x 3', '(1 + 2) / 4'); None for anything else."""
    t = text.strip().replace("×", "*").replace("÷", "/").replace("x", "*")
    if not t or len(t) > 200 or not _ARITHMETIC.fullmatch(t):
        return None
    try:
        tree = ast.parse(t, mode="eval").body
    except (SyntaxError, ValueError):
        return None

    def value(node) -> Fraction:
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return Fraction(str(node.value))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            v = value(node.operand)
            return -v if isinstance(node.op, ast.USub) else v
        if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
            return _OPERATORS[type(node.op)](value(node.left), value(node.right))
        raise ValueError("not arithmetic")

    try:
        return value(tree)
    except (ValueError, ZeroDivisionError, RecursionError):
        return None


def equation_result(text: str) -> str | None:
    """An equation takes its result: '6 - 2 = 4' -> '4', 'red + blue = 4' -> '4'; a false one ('0 = 2', '6 - 2 =
    5': plain arithmetic that does not give the result) or a cut-off one ('6 - 2 =') is None."""
    if "=" not in text:
        return text
    left, result = (part.strip() for part in text.rsplit("=", 1))
    if not result:
        return None
    stated, got = arithmetic_value(left.rsplit("=", 1)[-1]), arithmetic_value(result)
    if stated is not None and got is not None and stated != got:
        return None
    return result


def is_short(text: str) -> bool:
    return len(text.split()) <= MAX_SENTENCE_WORDS


def option_answer(
    content: str | None, choices: list[str] | None = None, key=None, max_letters: int | None = None
) -> str | None:
    """The one option an answer names, as its letter; None when it names none, or two or more different ones.

    An option is named by its letter ('B', '(b)', 'B.', 'B: 30°', '(B) 30°', 'Option B', 'The correct answer is
    (B).') or, given `choices`, by its text compared in `key`'s normal form (default: case, spaces and a final
    period folded). A hedge ('(B) or (C)', 'B/C', 'B and C', '30° or 45°') names two and is None. Letters beyond
    the options (or `max_letters`) name none.
    """
    if not content:
        return None
    key = key or fold_text
    t = strip_lead_in(content)
    if not t:
        return None
    n = max_letters or (len(choices) if choices else 26)

    def by_text(part: str) -> str | None:
        if not choices or not part.strip():
            return None
        k = key(part)
        found = [i for i, c in enumerate(choices) if key(c) == k]
        return chr(ord("A") + found[0]) if len(found) == 1 else None

    whole = by_text(t)
    if whole is not None:  # option text, however long, even one that itself holds 'and' or '/'
        return whole
    if not is_short(t):
        return None
    named = {m.upper() for m in _BRACKETED_LETTER.findall(t)}
    named |= {m.upper() for m in _LETTER_BEFORE_CONNECTOR.findall(t) + _LETTER_AFTER_CONNECTOR.findall(t)}
    lead = option_letter(t)
    if lead is not None:
        named.add(lead)
    for part in _ALTERNATIVES.split(t):
        named.add(by_text(part))
        if _BARE_LETTER.fullmatch(part.strip()):  # 'b or c'
            named.add(option_letter(part))
    named.discard(None)
    if len(named) != 1:
        return None
    letter = named.pop()
    return letter if letter_index(letter) < n else None


# -- option letters --------------------------------------------------------------------------------------------
_OPTION_WORD = re.compile(r"^(?:the\s+)?(?:correct\s+)?(?:option|choice)\s*(?:is\s*)?:?\s*", re.IGNORECASE)
_BARE_LETTER = re.compile(r"\(?([A-Za-z])\)?[.:]?")
_PAREN_LETTER = re.compile(r"\(([A-Za-z])\)")
_LETTER_THEN_TEXT = re.compile(r"([A-Za-z])(?:[.:)]\s|\s+\()")


def option_letter(text: str) -> str | None:
    """The option letter an answer names, upper-case, or None.

    'B', '(b)', 'B.', 'B)', 'B: 30°', '(B) 30°', 'B (30°)', 'Option B', 'The correct option is (C)' name a
    letter; 'A triangle' or 'A.M.' do not (a letter must stand alone, be bracketed, or be followed by '.', ':'
    or ')' and a space, or by a bracket).
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


_NUMBER_IN_TEXT = re.compile(
    r"(?<![\w.$])([-+]?\$?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?(?:\s*/\s*\d+)?%?)(?![\w]|\.\d)"
)
_NUMBER_WORD = re.compile(r"\b(" + "|".join(NUMBER_WORDS) + r")\b", re.IGNORECASE)


def numbers_in(text: str, words: bool = False) -> list[str]:
    """The numbers a text states, as written: '1,000', '-2.5', '$3', '3/4', '45%' (and 'three' with `words`).
    A number glued to letters ('Q3', '1st', 'cm2') or a time's parts count as they are written ('2:10' is 2, 10)."""
    t = text.replace("\u2212", "-")
    found = [m.group(1) for m in _NUMBER_IN_TEXT.finditer(t)]
    return found + ([m.group(1) for m in _NUMBER_WORD.finditer(t)] if words else [])


def number_answer(content: str | None, words: bool = False, value=None) -> str | None:
    """The one value an answer line states, as written ('There are 4 objects left.' -> '4', '6 - 2 = 4' -> '4');
    None when it states none, or two or more different values ('4 or 5', '4-5'), or an option letter beside the
    number ('2. B'), or is no short sentence.
    `value` maps a number's text to what 'different' compares (default: exact value)."""
    if not content:
        return None
    t = equation_result(strip_lead_in(content))
    if not t or not is_short(t) or _LETTER_WORD.search(t):
        return None
    value = value or (lambda s: parse_integer(s) if s.lower() in NUMBER_WORDS else parse_number(s.rstrip("%")))
    found = numbers_in(t, words)
    values = {value(s) for s in found}
    return found[0] if len(values) == 1 else None


def parse_integer(text: str) -> int | None:
    """An integer from '3', '+3', '3.0', '1,000' or a number word up to twenty; None for 2.5 or text."""
    t = text.strip().lower()
    if t in NUMBER_WORDS:
        return NUMBER_WORDS[t]
    value = parse_number(t)
    if value is None or value.denominator != 1:
        return None
    return int(value)


# -- TabMWP ----------------------------------------------------------------------------------------------------
_TABMWP_NUMERIC = re.compile(r"[-+]?[\d,./]+")
_NUMBER_THEN_WORDS = re.compile(r"(\$?[-+]?[\d,./]*\d)\s+[A-Za-z][A-Za-z .]*")
_MERIDIEM = re.compile(r"(\d)\s*([AaPp])\.?\s?[Mm]\b\.?")
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
    lose the unit and compare case-insensitively. Three deliberate extensions: the unit is stripped before the
    number rule too ('5.50 cm' -> '5.5', where the script kept '5.50'), without a known unit a number followed
    by words ('5 apples') is that number, and a clock time's 'PM', 'p.m.' and 'P.M.' are one spelling.
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
    t = _MERIDIEM.sub(lambda m: f"{m.group(1)} {m.group(2).lower()}m", t)
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
