"""The reflection prompts of R3V (docs/method.md, step 3), in one place.

Training (self-refine, self-select), evaluation (Select@N) and serving (self_select strategy) all build their
prompts here, so a model is always asked at test time exactly what it was trained on.
"""

from __future__ import annotations

REFINE_HEADER = "Model's prediction:"
REFINE_INSTRUCTION = "Judge the correctness of the model's prediction and refine it."
SELECT_INSTRUCTION = "Which prediction is correct? Give the final answer."

# Perception examples (reflect.warmup_captions) ask for the caption in several wordings of different lengths: under
# one fixed prompt a tiny model learns to find the image by relative position and fails under any other prompt.
CAPTION_PROMPTS = [
    "Describe the image.",
    "Describe the image please.",
    "What is in the picture? Describe the image.",
    "Count the objects of each colour.",
    "Tell me the colours you see, with counts.",
    "Look at the image and describe it in a few words.",
]


def refine_prompt(cot_prompt: str, negative_rationale: str) -> str:
    """(x, y-) -> prompt whose target is a positive rationale y+."""
    return f"{cot_prompt}\n{REFINE_HEADER}\n{negative_rationale}\n{REFINE_INSTRUCTION}"


def select_prompt(question_prompt: str, candidates: list[str]) -> str:
    """(x, C) -> prompt whose target is 'Answer: a*'. Candidates are numbered from 1 in the given order."""
    parts = [question_prompt]
    for i, candidate in enumerate(candidates, start=1):
        parts.append(f"Model's prediction {i}:\n{candidate}")
    parts.append(SELECT_INSTRUCTION)
    return "\n".join(parts)


# Words the tiny tokenizer should learn merges for.
PROMPT_WORDS = [REFINE_HEADER, REFINE_INSTRUCTION, SELECT_INSTRUCTION, *CAPTION_PROMPTS] + [
    f"Model's prediction {i}:" for i in range(1, 7)
]
