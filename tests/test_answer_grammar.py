"""The answer grammar of every task (docs/data.md), as public tables: a model output, the gold answer, the verdict
labeling, evaluation and serving all get from `Task.score_record`, and the rule each case exercises.

Output styles are those of the benchmarks' reference rationales (the releases' teacher CoT: reasoning, then a
final 'Answer:' line) and of the ways a sampled rationale goes wrong: hedging, stopping mid-answer, wrapping the
answer in LaTeX or markdown, writing it in full-width forms or as a sentence.
"""

from __future__ import annotations

from typing import NamedTuple

import pytest

from r3v_ray.tasks import Record, get_task


class Case(NamedTuple):
    text: str
    gold: str
    correct: bool
    rule: str


def check_table(task_name: str, case: Case, choices=None, **metadata):
    task = get_task(task_name)
    record = Record(id="q1", question="?", answer=case.gold, choices=choices, metadata=metadata)
    predicted, correct = task.score_record(record, case.text)
    assert correct is case.correct, f"{case.rule}: {case.text!r} -> {predicted!r}"
    if predicted is None:
        assert not correct


# -- the built-in synthetic task -------------------------------------------------------------------------------
SYNTHETIC = [
    Case("Red objects: 2. Blue objects: 3. 2 + 3 = 5.\nAnswer: 5", "5", True, "well-formed teacher rationale"),
    Case("All objects: 6. Blue objects: 3. 6 - 3 = 3.\nAnswer: 3", "3", True, "well-formed teacher rationale"),
    Case("Red objects: 2. Blue objects: 1. 2 is more than 1.\nAnswer: A", "A", True, "well-formed option letter"),
    Case("Red objects: 1. Blue objects: 1.\nAnswer: B", "A", False, "a wrong letter"),
    Case("Red objects: 2. Blue objects: 3.\nAnswer: 6", "5", False, "a wrong number"),
    Case("Answer: 4\nWait, recount.\nAnswer: 5", "5", True, "the last answer line only"),
    Case("Answer: 5\nWait, recount.\nAnswer:", "5", False, "an empty last answer line is no answer"),
    Case("Answer: 5 or 6", "5", False, "a hedge over two values"),
    Case("Answer: (A) or (B)", "A", False, "a hedge over two options"),
    Case("Answer: 2 + 3 = 5", "5", True, "an equation takes its result"),
    Case("Answer: \\boxed{5}", "5", True, "\\boxed{} unwrapped"),
    Case("**Answer:** 5", "5", True, "markdown emphasis unwrapped"),
    Case("Answer：Ａ", "A", True, "full-width forms"),
    Case("Answer: no", "B", True, "the option's text names its letter"),
    Case("Answer: There are 5 objects.", "5", True, "a short sentence around one number"),
    Case("There are 5 objects.", "5", False, "no answer line: never a guess"),
    Case("Answer: (A) 5", "5", False, "a letter and a number: two answers"),
    Case("Red objects: 2. Blue objects: 0.\nAnswer: 2. B", "2", False,
         "a number beside an option letter (demo output)"),
    Case("All objects: 1. Blue objects: 1.\nAnswer: 0 = 2", "2", False, "a false equation is no answer (demo output)"),
]


@pytest.mark.parametrize("case", SYNTHETIC, ids=lambda c: c.rule)
def test_synthetic_answer_grammar(case):
    check_table("synthetic", case, choices=["yes", "no"] if case.gold.isalpha() else None)


# -- GeoQA -----------------------------------------------------------------------------------------------------
GEO_CHOICES = ["30°", "45°", "60°", "90°"]
GEOQA = [
    Case("∠ABC = 45° by the inscribed angle theorem.\nAnswer: B", "B", True, "release style: a bare letter"),
    Case("So the angle is 45°.\nAnswer: (B)", "B", True, "a bracketed letter"),
    Case("Answer: B: 45°", "B", True, "a letter with its option text"),
    Case("Answer: (B) 45°", "B", True, "a bracketed letter with its option text"),
    Case("Answer: B (45°)", "B", True, "a letter with its option text in brackets"),
    Case("Answer: 45°", "B", True, "the option's text names its letter"),
    Case("Answer: (B) or (C)", "B", False, "a hedge over two options"),
    Case("Answer: B/C", "B", False, "a hedge written with a slash"),
    Case("Answer: either B or C", "B", False, "a hedge in words"),
    Case("Answer: 45° or 60°", "B", False, "a hedge over two option texts"),
    Case("Answer: A\nRecheck the arc.\nAnswer:", "A", False, "an empty last answer line is no answer"),
    Case("Answer: \\boxed{B}", "B", True, "\\boxed{} unwrapped"),
    Case("**Answer: B**", "B", True, "markdown emphasis unwrapped"),
    Case("Answer：（Ｂ）", "B", True, "full-width forms"),
    Case("Answer: The correct answer is (B).", "B", True, "a short sentence around one option"),
    Case("Answer: (E)", "B", False, "a letter outside the options names none"),
    Case("Answer: A triangle has 180°", "A", False, "the article 'A' is no option letter"),
    Case("Clearly the answer is (B) here.", "B", False, "no answer line: never a guess"),
    Case("Answer: C", "B", False, "a wrong letter"),
]


@pytest.mark.parametrize("case", GEOQA, ids=lambda c: c.rule)
def test_geoqa_answer_grammar(case):
    check_table("geoqa", case, choices=GEO_CHOICES)


# -- M3CoT -----------------------------------------------------------------------------------------------------
LONG_OPTION = "the mass of the object stays the same while its weight changes with the strength of gravity around it"
M3COT_CHOICES = ["a cat", "a dog", "salt and pepper", LONG_OPTION]
M3COT = [
    Case("The animal barks and wags its tail.\nAnswer: B", "B", True, "release style: a bare letter"),
    Case("It barks.\nAnswer: a dog", "B", True, "the option's text names its letter"),
    Case("Answer: salt and pepper", "C", True, "option text holding 'and' is one option"),
    Case(f"Answer: {LONG_OPTION}.", "D", True, "an option's text longer than a short sentence"),
    Case("Answer: (B) and (C)", "B", False, "a hedge over two options"),
    Case("Answer: B, C", "B", False, "a list of two options"),
    Case("Answer: a cat or a dog", "B", False, "a hedge over two option texts"),
    Case("Answer: B\nOn reflection the tail suggests otherwise.\nAnswer:", "B", False,
         "an empty last answer line is no answer"),
    Case("Answer: (B", "B", True, "an unclosed bracket around one letter still names it"),
    Case("Answer: \\boxed{B}", "B", True, "\\boxed{} unwrapped"),
    Case("Answer: **(B)**", "B", True, "markdown emphasis unwrapped"),
    Case("Answer: Ｂ", "B", True, "full-width letter"),
    Case("Answer: The answer is B.", "B", True, "a short sentence around one option"),
    Case("Answer: Option B", "B", True, "'Option B'"),
    Case("Answer: b.", "B", True, "lower case with a period"),
    Case("Answer: a bird", "B", False, "text naming no option"),
    Case("Answer: A\nAnswer: B", "A", False, "the last answer line only"),
]


@pytest.mark.parametrize("case", M3COT, ids=lambda c: c.rule)
def test_m3cot_answer_grammar(case):
    check_table("m3cot", case, choices=M3COT_CHOICES)


# -- TabMWP ----------------------------------------------------------------------------------------------------
TIME_CHOICES = ["2:10 P.M.", "2:40 P.M.", "3:10 P.M."]
TABMWP_CHOICE = [
    Case("The bus leaves at 2:10 P.M.\nAnswer: A", "A", True, "a bare letter"),
    Case("Answer: 2:10 P.M.", "A", True, "the option's text names its letter"),
    Case("Answer: 2:10 PM", "A", True, "clock times in one spelling (PM = P.M.)"),
    Case("Answer: (A) or (B)", "A", False, "a hedge over two options"),
    Case("Answer: 2:10 P.M. or 2:40 P.M.", "A", False, "a hedge over two option texts"),
    Case("Answer:", "A", False, "an empty answer is no answer (the official scorer would pick option A)"),
    Case("Answer: 4:00 P.M.", "A", False, "text naming no option (no most-similar option)"),
]
TABMWP_FREE = [
    Case("Add them up: 600 + 400 = 1,000.\nAnswer: 1,000", "1,000", True, "release style: the solution's number"),
    Case("Answer: 1000", "1,000", True, "thousands separators do not matter"),
    Case("Answer: $1,000.00", "1000", True, "'$' and trailing zeros do not matter"),
    Case("Answer: 600 + 400 = 1000", "1000", True, "an equation takes its result"),
    Case("Answer: 1000 or 1100", "1000", False, "a hedge over two values"),
    Case("Answer: 3/4", "0.75", True, "a fraction is its value"),
    Case("Answer: \\frac{3}{4}", "0.75", True, "LaTeX fraction unwrapped"),
    Case("Answer: 5.50 cm", "5.5", True, "the unit does not matter"),
    Case("Answer: There are 12 stamps.", "12", True, "a short sentence around one number"),
    Case("Answer: 12\nCheck the table again.\nAnswer:", "12", False, "an empty last answer line is no answer"),
    Case("Answer: \\boxed{12}", "12", True, "\\boxed{} unwrapped"),
    Case("Answer: １２", "12", True, "full-width digits"),
    Case("Answer: 13", "12", False, "a wrong number"),
]
TABMWP_TEXT = [
    Case("Answer: Friday", "Friday", True, "text compared case-insensitively"),
    Case("Answer: **friday**", "Friday", True, "markdown emphasis unwrapped"),
    Case("Answer: Friday or Monday", "Friday", False, "a hedge over two texts"),
]


@pytest.mark.parametrize("case", TABMWP_CHOICE, ids=lambda c: c.rule)
def test_tabmwp_option_answer_grammar(case):
    check_table("tabmwp", case, choices=TIME_CHOICES, ans_type="other_text")


@pytest.mark.parametrize("case", TABMWP_FREE, ids=lambda c: c.rule)
def test_tabmwp_number_answer_grammar(case):
    check_table("tabmwp", case, ans_type="decimal_number", unit="cm")


@pytest.mark.parametrize("case", TABMWP_TEXT, ids=lambda c: c.rule)
def test_tabmwp_text_answer_grammar(case):
    check_table("tabmwp", case, ans_type="extractive_text")


# -- ChartQA ---------------------------------------------------------------------------------------------------
CHARTQA = [
    Case("The bar for 2019 reads 45.\nAnswer: 45", "45", True, "a number"),
    Case("Answer: 46", "45", True, "relaxed accuracy: within 5%"),
    Case("Answer: 48", "45", False, "relaxed accuracy: beyond 5%"),
    Case("Answer: 1,000", "1000", True, "thousands separators do not matter"),
    Case("Answer: 45 or 50", "45", False, "a hedge over two values"),
    Case("Answer: 60 - 15 = 45", "45", True, "an equation takes its result"),
    Case("Answer: The value in the chart is 45.", "45", True, "a short sentence around one number"),
    Case("Answer: 45\nLooking again at the axis.\nAnswer:", "45", False, "an empty last answer line is no answer"),
    Case("Answer: \\boxed{45}", "45", True, "\\boxed{} unwrapped"),
    Case("**Answer:** 45", "45", True, "markdown emphasis unwrapped"),
    Case("Answer：４５", "45", True, "full-width forms"),
    Case("Answer: Yes", "Yes", True, "Yes/No compared case-insensitively"),
    Case("Answer: yes.", "Yes", True, "a final period does not matter"),
    Case("Answer: Yes or No", "Yes", False, "a hedge over two texts"),
    Case("Answer: Asia and Pacific", "Asia and Pacific", True, "a text answer holding 'and'"),
    Case("Answer: Q3 2015", "Q3 2015", True, "a text answer with numbers in it"),
    Case("Answer: \\boxed{45", "45", False, "a cut-off wrapper is no answer"),
]


@pytest.mark.parametrize("case", CHARTQA, ids=lambda c: c.rule)
def test_chartqa_answer_grammar(case):
    check_table("chartqa", case)


# -- CLEVR-Math ------------------------------------------------------------------------------------------------
CLEVR = [
    Case("There are 7 objects. Subtract the 3 red cubes: 7 - 3 = 4.\nAnswer: 4", "4", True, "release style"),
    Case("Answer: 4 objects", "4", True, "a unit after the integer"),
    Case("Answer: four", "4", True, "a number word"),
    Case("Answer: 4 or 5", "4", False, "a hedge over two values"),
    Case("Answer: 4-5", "4", False, "a range is a hedge"),
    Case("Answer: 6 - 2 = 4", "4", True, "an equation takes its result"),
    Case("Answer: 6 - 2 = 4", "6", False, "an equation's first number is not its answer"),
    Case("Answer: 5\nLet me recount the cylinders.\nAnswer:", "5", False, "an empty last answer line is no answer"),
    Case("Answer: 6 - 2 =", "6", False, "a cut-off equation is no answer"),
    Case("Answer: 6 - 2 = 5", "5", False, "a false equation is no answer"),
    Case("Answer: \\boxed{4}", "4", True, "\\boxed{} unwrapped"),
    Case("**Answer:** 4", "4", True, "markdown emphasis unwrapped"),
    Case("Answer：４", "4", True, "full-width forms"),
    Case("Answer: There are 4 objects left.", "4", True, "a short sentence around one number"),
    Case("Answer: 2.5", "2", False, "no integer"),
    Case("There are 4 objects left.", "4", False, "no answer line: never a guess"),
    Case("Answer: 3 objects... no wait.\nAnswer: 4", "3", False, "the last answer line only"),
]


@pytest.mark.parametrize("case", CLEVR, ids=lambda c: c.rule)
def test_clevr_math_answer_grammar(case):
    check_table("clevr_math", case)


# -- generic ---------------------------------------------------------------------------------------------------
GENERIC_CHOICES = ["cat", "dog", "bird"]
GENERIC = [
    Case("Answer: 1000", "1,000", True, "numbers by value"),
    Case("Answer: 0.75", "3/4", True, "a fraction is its value"),
    Case("Answer: 1000 or 2000", "1000", False, "a hedge over two values"),
    Case("Answer: 250 x 4 = 1000", "1000", True, "an equation takes its result"),
    Case("Answer: The total is 1000.", "1000", True, "a short sentence around one number"),
    Case("Answer: 1000\nWait.\nAnswer:", "1000", False, "an empty last answer line is no answer"),
    Case("Answer: $\\boxed{1000}$", "1000", True, "\\boxed{} and $...$ unwrapped"),
    Case("**Answer:** 1000", "1000", True, "markdown emphasis unwrapped"),
    Case("Answer：１０００", "1000", True, "full-width forms"),
    Case("Answer: Paris", "paris", True, "text compared case-insensitively"),
    Case("Answer: Paris or Lyon", "Paris", False, "a hedge over two texts"),
    Case("Answer: 999", "1000", False, "a wrong number"),
]
GENERIC_OPTIONS = [
    Case("Answer: B", "B", True, "a letter"),
    Case("Answer: dog", "B", True, "the option's text names its letter"),
    Case("Answer: (A) or (B)", "B", False, "a hedge over two options"),
    Case("Answer: cat/dog", "B", False, "a hedge over two option texts"),
    Case("Answer: The correct answer is (B).", "B", True, "a short sentence around one option"),
]


@pytest.mark.parametrize("case", GENERIC, ids=lambda c: c.rule)
def test_generic_answer_grammar(case):
    check_table("generic", case)


@pytest.mark.parametrize("case", GENERIC_OPTIONS, ids=lambda c: c.rule)
def test_generic_option_answer_grammar(case):
    check_table("generic", case, choices=GENERIC_CHOICES)


def test_every_table_has_at_least_15_cases():
    tables = {"synthetic": SYNTHETIC, "geoqa": GEOQA, "m3cot": M3COT,
              "tabmwp": TABMWP_CHOICE + TABMWP_FREE + TABMWP_TEXT, "chartqa": CHARTQA, "clevr_math": CLEVR,
              "generic": GENERIC + GENERIC_OPTIONS}
    assert {name: len(t) >= 15 for name, t in tables.items()} == {name: True for name in tables}
