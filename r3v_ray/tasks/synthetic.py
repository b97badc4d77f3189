"""The built-in visual-reasoning task (in the spirit of CLEVR-Math), generated deterministically from a seed.

An image is a grid of cells; some cells hold a coloured object. Each cell is exactly one merged visual token
(patch_size * merge_size pixels square), so even a tiny vision tower sees one object per token. Every question
needs the image (counts of colours) and at least two reasoning steps (two counts, then an operation):

- sum:      "How many red objects and blue objects are there in total?"      -> integer
- subtract: "Subtract all red objects. How many objects are left?"           -> integer
- compare:  "Are there more red objects than blue objects?" (A) yes (B) no   -> option letter
- product (opt-in): "Multiply the number of red objects by the number of blue objects." -> integer; no single
  count of objects in the image is the answer, so it has to be computed from the counts

The teacher rationale states each count, then the operation, then "Answer: X" (the warm-up CoT data). With
`paths: 2` (three or more colours) a sum or subtract question has two teacher solutions, chosen per question: the
direct one, or the complement (sum: all objects minus the colours not asked about; subtract: add up the colours
not subtracted). They read different counts from the image, so sampled rationales can reach one answer by partly
independent routes (self-consistency's premise); compare and product questions have one route.
"""

from __future__ import annotations

import functools
import json
import operator
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from PIL import Image, ImageDraw

from r3v_ray.tasks.answers import number_answer, option_answer, parse_integer
from r3v_ray.tasks.base import Faithfulness, Record, Task, letters

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (40, 70, 230),
    "yellow": (235, 200, 20),
}
BACKGROUND = (255, 255, 255)
QUESTION_TYPES = ("sum", "subtract", "compare")
EXTRA_QUESTION_TYPES = ("product",)  # opt-in (task.params.question_types); not in the default mix
ROUTED_TYPES = ("sum", "subtract")  # the types with a second teacher route under `paths: 2`
YES_NO = ["yes", "no"]


@dataclass
class SyntheticParams:
    grid: int = 3
    cell: int = 28  # = patch_size * merge_size of the model: one object per visual token
    colors: tuple[str, ...] = ("red", "green", "blue", "yellow")
    min_objects: int = 2
    max_objects: int = 6
    question_types: tuple[str, ...] = QUESTION_TYPES
    paths: int = 1  # teacher solution routes per sum/subtract question: 1, or 2 (the complement route too)
    layout: dict = field(default_factory=dict)  # unused; keeps the dataclass open for task params from YAML


def render(layout: list[str | None], grid: int, cell: int) -> Image.Image:
    """layout[i] is the colour in cell i (row-major) or None."""
    img = Image.new("RGB", (grid * cell, grid * cell), BACKGROUND)
    draw = ImageDraw.Draw(img)
    pad = max(2, cell // 7)
    for i, colour in enumerate(layout):
        if colour is None:
            continue
        r, c = divmod(i, grid)
        x0, y0 = c * cell + pad, r * cell + pad
        draw.rectangle([x0, y0, x0 + cell - 2 * pad - 1, y0 + cell - 2 * pad - 1], fill=COLORS[colour])
    return img


def _count(layout: list[str | None], colour: str | None = None) -> int:
    return sum(1 for x in layout if (x is not None if colour is None else x == colour))


def _stated(name: str, n: int) -> str:
    """One observation, colour (or "all") first: the form rationales and captions share."""
    return f"{name.capitalize()} objects: {n}."


def _terms(layout: list[str | None], names: list[str]) -> tuple[str, list[int]]:
    """The observations of `names` (in order) and their counts, e.g. ("Red objects: 2. Blue objects: 1.", [2, 1])."""
    counts = [_count(layout, None if name == "all" else name) for name in names]
    return " ".join(_stated(name, n) for name, n in zip(names, counts)), counts


_OPERATIONS = {"+": operator.add, "-": operator.sub, "x": operator.mul}


def _arithmetic(counts: list[int], op: str) -> tuple[int, str]:
    """The counts combined left to right, and the line that shows it, e.g. (5, "2 + 3 = 5.")."""
    value = functools.reduce(_OPERATIONS[op], counts)
    return value, f" {op} ".join(str(n) for n in counts) + f" = {value}."


def solve(
    layout: list[str | None], qtype: str, c1: str, c2: str | None,
    colors: tuple[str, ...] = (), route: int = 0,
) -> tuple[str, str]:
    """(gold answer, teacher rationale) for a question about a layout.

    Each count is stated colour first ("Red objects: 2."), the form of the captions: the model names what it
    counts before the number, so reading a count from the image is one step, not two. Route 1 (sum and subtract
    only; needs the task's `colors`) is the complement solution: all objects minus the colours not asked about,
    or the sum of the colours not subtracted.
    """
    if qtype == "compare":
        n1, n2 = _count(layout, c1), _count(layout, c2)
        more = n1 > n2
        letter = "A" if more else "B"
        relation = "more than" if more else "not more than"
        return letter, f"{_stated(c1, n1)} {_stated(c2, n2)} {n1} is {relation} {n2}.\nAnswer: {letter}"
    if qtype == "product":
        names, op = [c1, c2], "x"
    elif qtype in ROUTED_TYPES:
        if route not in (0, 1):
            raise ValueError(f"unknown solution route {route!r}")
        asked = [c1, c2] if qtype == "sum" else [c1]
        others = [c for c in colors if c not in asked]
        if route == 1 and not others:
            raise ValueError("the complement route needs the task's colours")
        if (qtype == "sum") == (route == 0):
            names, op = (asked if route == 0 else others), "+"  # sum of the asked colours / of the others
        else:
            names, op = ["all"] + (asked if route == 0 else others), "-"  # all minus the subtracted / the others
    else:
        raise ValueError(f"unknown question type {qtype!r}")
    stated, counts = _terms(layout, names)
    value, arithmetic = _arithmetic(counts, op)
    return str(value), f"{stated} {arithmetic}\nAnswer: {value}"


_STATED = re.compile(r"\b([A-Za-z]+) objects: (\d+)\.")


def derivable_answers(stated: dict[str, int], qtype: str, c1: str, c2: str | None,
                      colors: tuple[str, ...]) -> set[str]:
    """The answers the question's operation gives from the counts a rationale states, by any teacher route whose
    counts it states (route 1 is the complement: all objects minus the others, or the others added up)."""
    def value(names: list[str], op: str) -> str | None:
        if any(name not in stated for name in names):
            return None
        return str(functools.reduce(_OPERATIONS[op], [stated[name] for name in names]))

    if qtype == "compare":
        if c1 in stated and c2 in stated:
            return {"A" if stated[c1] > stated[c2] else "B"}
        return set()
    if qtype == "product":
        routes = [([c1, c2], "x")]
    else:
        asked = [c1, c2] if qtype == "sum" else [c1]
        others = [c for c in colors if c not in asked]
        if qtype == "sum":
            routes = [(asked, "+"), (["all"] + others, "-")]
        else:
            routes = [(["all"] + asked, "-"), (others, "+")]
    return {v for v in (value(names, op) for names, op in routes if names) if v is not None}


def check_faithfulness(layout: list[str | None], qtype: str, c1: str, c2: str | None, colors: tuple[str, ...],
                       rationale: str | None, answer: str | None) -> Faithfulness:
    """Faithfulness of one rationale (its extracted final answer given) to its own statements and to the image."""
    stated: dict[str, int] = {}
    for name, n in _STATED.findall(rationale or ""):
        stated.setdefault(name.lower(), int(n))  # the first statement of a count is the one reasoned from
    truth = {name: _count(layout, None if name == "all" else name) for name in stated if name in COLORS or name == "all"}
    grounded = bool(stated) and len(truth) == len(stated) and all(truth[k] == v for k, v in stated.items())
    consistent = answer is not None and answer in derivable_answers(stated, qtype, c1, c2, colors)
    return Faithfulness(consistent=consistent, grounded=grounded)


def caption(layout: list[str | None], colors: tuple[str, ...]) -> str:
    """What the image shows, in the rationales' own words: the total, then every colour's count."""
    return " ".join([_stated("all", _count(layout))] + [_stated(c, _count(layout, c)) for c in colors])


def question_for(qtype: str, c1: str, c2: str | None) -> tuple[str, list[str] | None]:
    if qtype == "sum":
        return f"How many {c1} objects and {c2} objects are there in total?", None
    if qtype == "subtract":
        return f"Subtract all {c1} objects. How many objects are left?", None
    if qtype == "compare":
        return f"Are there more {c1} objects than {c2} objects?", list(YES_NO)
    if qtype == "product":
        return f"Multiply the number of {c1} objects by the number of {c2} objects. What is the result?", None
    raise ValueError(f"unknown question type {qtype!r}")


class SyntheticTask(Task):
    name = "synthetic"

    def __init__(self, **params):
        params = {k: tuple(v) if isinstance(v, list) else v for k, v in params.items()}
        self.params = SyntheticParams(**params)
        unknown = set(self.params.question_types) - set(QUESTION_TYPES + EXTRA_QUESTION_TYPES)
        if unknown:
            raise ValueError(f"synthetic task: unknown question_types {sorted(unknown)}")
        if type(self.params.paths) is not int or self.params.paths not in (1, 2):
            raise ValueError(f"synthetic task: paths must be 1 or 2, got {self.params.paths!r}")
        if self.params.paths == 2 and len(self.params.colors) < 3:
            # With two colours the complement of a sum is empty and that of a subtract is one count.
            raise ValueError(f"synthetic task: paths: 2 needs at least 3 colors, got {list(self.params.colors)}")
        bad_colors = set(self.params.colors) - set(COLORS)
        if bad_colors:
            raise ValueError(f"synthetic task: unknown colors {sorted(bad_colors)}; known: {sorted(COLORS)}")

    # -- generation ------------------------------------------------------------------------------
    def random_layout(self, rng: random.Random) -> list[str | None]:
        p = self.params
        cells = p.grid * p.grid
        n = rng.randint(p.min_objects, min(p.max_objects, cells))
        layout: list[str | None] = [None] * cells
        for i in rng.sample(range(cells), n):
            layout[i] = rng.choice(p.colors)
        return layout

    def generate_records(self, split: str, n: int, seed: int) -> Iterator[Record]:
        """Records with their layout in metadata (no image file yet); deterministic in (split, n, seed)."""
        rng = random.Random(f"r3v-synthetic-{seed}-{split}")
        for i in range(n):
            layout = self.random_layout(rng)
            qtype = rng.choice(self.params.question_types)
            c1, c2 = rng.sample(self.params.colors, 2)
            if qtype == "subtract":
                c2 = None
            question, choices = question_for(qtype, c1, c2)
            route = 0
            if self.params.paths > 1 and qtype in ROUTED_TYPES:
                # Its own generator, so the layouts and questions stay those of `paths: 1`.
                route = random.Random(f"r3v-synthetic-{seed}-{split}-{i}-route").randrange(2)
            answer, rationale = solve(layout, qtype, c1, c2, self.params.colors, route)
            yield Record(
                id=f"syn-{split}-{i:05d}",
                question=question,
                answer=answer,
                choices=choices,
                rationale=rationale,
                metadata={"layout": layout, "qtype": qtype, "colors": [c1, c2], "grid": self.params.grid},
            )

    def pool_records(self, n: int, seed: int, exclude: set[tuple]) -> list[Record]:
        """`n` captioned images for pretraining a tiny base (r3v_ray/pipeline/pretrain.py), none with a layout in
        `exclude` (the task's questions' layouts, as tuples) and none twice. Their own generator and "pool-" ids,
        so the task's data is the same with or without a pool."""
        rng = random.Random(f"r3v-synthetic-pool-{seed}")
        seen, records = set(exclude), []
        for _ in range(100 * n):  # bounded: a small grid may have fewer free layouts than asked for
            if len(records) == n:
                break
            layout = self.random_layout(rng)
            if tuple(layout) in seen:
                continue
            seen.add(tuple(layout))
            records.append(Record(id=f"pool-{len(records):05d}", question="", answer="",
                                  metadata={"layout": layout, "grid": self.params.grid}))
        if len(records) < n:
            raise ValueError(f"synthetic task: only {len(records)} pool images whose layout no question has, "
                             f"{n} asked for (grid {self.params.grid}, colors {list(self.params.colors)})")
        return records

    def count_statement(self, layout: list[str | None], rng: random.Random) -> tuple[str, str]:
        """(prompt, target): counts of one to three of the colours (or all objects), in a random order, stated as
        a rationale states them ("Blue objects: 1. Red objects: 2.")."""
        names = rng.sample(["all", *self.params.colors], rng.randint(1, min(3, len(self.params.colors) + 1)))
        asked = " and ".join(f"{name} objects" for name in names)
        return f"State the number of {asked}.", _terms(layout, names)[0]

    def arithmetic_examples(self, n: int, seed: int) -> list[tuple[str, str]]:
        """(prompt, target) pairs of the arithmetic the rationales do, in their form: sums and differences of
        counts (as many terms as a route reads), comparisons, and products where the task asks them."""
        p = self.params
        rng = random.Random(f"r3v-synthetic-arithmetic-{seed}")
        kinds = ["+", "-", "compare"] + (["x"] if "product" in p.question_types else [])
        pairs = []
        for _ in range(n):
            kind = rng.choice(kinds)
            if kind == "compare":
                a, b = rng.randint(0, p.max_objects), rng.randint(0, p.max_objects)
                relation = "more than" if a > b else "not more than"
                pairs.append((f"Is {a} more than {b}?", f"{a} is {relation} {b}."))
                continue
            terms = 2 if kind == "x" else rng.randint(2, max(2, len(p.colors)))
            counts = [rng.randint(0, p.max_objects) for _ in range(terms)]
            if kind == "-":  # all objects minus some colours: the first term is at least the rest
                counts[0] = rng.randint(sum(counts[1:]), max(sum(counts[1:]), p.max_objects))
            _, line = _arithmetic(counts, kind)
            pairs.append((f"Compute {line.split(' = ')[0]}.", line))
        return pairs

    def caption(self, record: Record) -> str | None:
        layout = record.metadata.get("layout")
        return caption(layout, self.params.colors) if layout is not None else None

    def faithfulness(self, record: Record, rationale: str | None) -> Faithfulness | None:
        meta = record.metadata
        if meta.get("layout") is None:
            return None
        c1, c2 = meta["colors"]
        return check_faithfulness(meta["layout"], meta["qtype"], c1, c2, self.params.colors, rationale,
                                  self.extract_for(record, rationale))

    def render(self, record: Record) -> Image.Image:
        return render(record.metadata["layout"], self.params.grid, self.params.cell)

    def write_split(self, out_dir: str | Path, split: str, n: int, seed: int) -> Path:
        """Write `<out>/<split>.jsonl` and `<out>/images/<id>.png`; byte-identical for the same arguments."""
        out = Path(out_dir)
        (out / "images").mkdir(parents=True, exist_ok=True)
        path = out / f"{split}.jsonl"
        tmp = path.with_suffix(".jsonl.tmp")
        with tmp.open("w") as fh:
            for record in self.generate_records(split, n, seed):
                rel = f"images/{record.id}.png"
                self.render(record).save(out / rel, format="PNG", optimize=False)
                record.image = rel
                fh.write(json.dumps(record.to_dict(), sort_keys=True) + "\n")
        tmp.replace(path)
        return path

    def write_dataset(self, out_dir: str | Path, num_train: int, num_test: int, seed: int) -> Path:
        out = Path(out_dir)
        self.write_split(out, "train", num_train, seed)
        self.write_split(out, "test", num_test, seed)
        return out

    # -- scoring ---------------------------------------------------------------------------------
    def normalize(self, answer: str) -> str | None:
        """An option letter ('B', '(b)', or the option text 'no') or an integer in digits, by the benchmark tasks'
        grammar (docs/data.md); anything else, or an answer naming both or two values, is never correct."""
        letter = option_answer(answer, YES_NO, max_letters=26)
        number = number_answer(answer)
        value = None if number is None else parse_integer(number)
        if (letter is None) == (value is None):
            return None
        return letter if letter is not None else str(value)

    def check(self, predicted: str | None, gold: str) -> bool:
        return predicted is not None and predicted == self.normalize(gold)
