"""The R3V objective: L = L_SFT + alpha * L_REF + beta * L_SEL (docs/method.md, the loss).

Two readings of the sum, `training.loss_reduction`:
- "mixture" (the default; what the authors' code computes, and so what the paper's numbers come from): every
  example of every objective sits in one shuffled SFT set and the loss is ONE token mean over all assistant tokens
  of the batch, each token weighted by its term: sum_t w_t * nll_sum_t / sum_t tokens_t. An objective weighs as
  many tokens as its targets hold.
- "per_term" (the paper's formula read literally): each term is the token mean over its own examples,
  sum_t w_t * nll_sum_t / tokens_t, so a one-line select target ("Answer: 3") pulls about 45x as hard per token
  as a rationale token (docs/reproduction.md).

Warm-up examples count with SFT. The sums and token counts are kept apart so that either mean can be taken over a
whole global batch, across micro-batches and workers, and a term with no tokens contributes exactly 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from r3v_ray.training.collator import IGNORE_INDEX
from r3v_ray.method.reflect import TERM_OF_TASK, TERMS
from r3v_ray.training.examples import TASK_IDS

# task id -> term index, as a lookup table
_TERM_INDEX = torch.tensor([TERMS.index(TERM_OF_TASK[name]) for name in sorted(TASK_IDS, key=TASK_IDS.get)])


def term_weights(alpha: float, beta: float) -> torch.Tensor:
    return torch.tensor([1.0, alpha, beta], dtype=torch.float32)


def token_terms(labels: torch.Tensor, task_ids: torch.Tensor) -> torch.Tensor:
    """(batch, seq-1) term index of every predicted token (the shifted labels); -1 where there is no label."""
    target = labels[:, 1:]
    terms = _TERM_INDEX.to(labels.device)[task_ids].unsqueeze(1).expand_as(target)
    return torch.where(target != IGNORE_INDEX, terms, torch.full_like(terms, -1))


def term_token_counts(labels: torch.Tensor, task_ids: torch.Tensor) -> torch.Tensor:
    """Assistant tokens per term, shape (3,)."""
    terms = token_terms(labels, task_ids)
    return torch.stack([(terms == t).sum() for t in range(len(TERMS))]).to(torch.float32)


def term_nll_sums(logits: torch.Tensor, labels: torch.Tensor, task_ids: torch.Tensor) -> torch.Tensor:
    """Summed next-token NLL per term, shape (3,), differentiable."""
    nll = F.cross_entropy(
        logits[:, :-1].float().reshape(-1, logits.shape[-1]),
        labels[:, 1:].reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    )
    terms = token_terms(labels, task_ids).reshape(-1)
    return torch.stack([nll[terms == t].sum() for t in range(len(TERMS))])


LOSS_REDUCTIONS = ("mixture", "per_term")


def combine(sums: torch.Tensor, counts: torch.Tensor, weights: torch.Tensor, reduction: str = "mixture"
            ) -> torch.Tensor:
    """The weighted loss from per-term NLL sums and the (global) per-term token counts: "mixture" divides by all
    tokens together, "per_term" each term by its own; an empty term contributes 0 under both."""
    counts = counts.to(sums.device)
    weighted = weights.to(sums.device) * sums
    if reduction == "mixture":
        return weighted.sum() / counts.sum().clamp(min=1.0)
    if reduction == "per_term":
        return (weighted / counts.clamp(min=1.0)).sum()
    raise ValueError(f"training.loss_reduction: {reduction!r} is not one of {LOSS_REDUCTIONS}")
