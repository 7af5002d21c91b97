"""What the training loop computes from a model's output, per task: the loss, top-k hits,
and the evaluation figures. A dataset names its task (``DatasetBundle.task``); the loop
looks it up in ``TASKS`` and never branches on it itself.

* ``classification``: logits ``[B, C]``, targets ``[B]``; cross entropy, top-1/top-5.
* ``lm`` (next-token prediction): logits ``[B, T, V]``, targets ``[B, T]``; the mean
  cross entropy over every position is the per-token negative log-likelihood, and
  validation perplexity is its exponential, PPL = exp(−(1/N)·Σ_i log p(x_i | x_<i))
  (Jelinek et al. 1977), over the N tokens of the validation split.
"""
from __future__ import annotations

import math
from typing import Dict

import torch
import torch.nn.functional as F

from ..registry import Registry

TASKS: "Registry[Task]" = Registry("task")


def top_k_hits(logits: torch.Tensor, y: torch.Tensor, k: int) -> int:
    """How many rows of ``logits`` [N, C] have their target ``y`` [N] among the top ``k``."""
    if k == 1:
        return int((logits.argmax(dim=1) == y).sum())
    k = min(k, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    return int((top == y.unsqueeze(1)).any(dim=1).sum())


class Task:
    """Classification: one target per sample."""

    name = "classification"

    def flat(self, logits: torch.Tensor, y: torch.Tensor):
        """``(logits [N, C], targets [N])``: one row per prediction."""
        return logits, y

    def loss(self, logits: torch.Tensor, y: torch.Tensor, label_smoothing: float = 0.0,
             reduction: str = "mean") -> torch.Tensor:
        logits, y = self.flat(logits, y)
        return F.cross_entropy(logits, y, label_smoothing=label_smoothing, reduction=reduction)

    def hits(self, logits: torch.Tensor, y: torch.Tensor, k: int) -> int:
        return top_k_hits(*self.flat(logits, y), k)

    def metrics(self, loss_sum: float, top1: float, top5: float, n: float, num_classes: int) -> Dict[str, float]:
        """Evaluation figures from sums over ``n`` predictions."""
        n = max(n, 1)
        out = {"test_loss": loss_sum / n, "test_acc": top1 / n}
        if num_classes >= 10:
            out["test_top5"] = top5 / n
        return out


class LanguageModelling(Task):
    """Next-token prediction: a target at every position; adds ``val_perplexity``."""

    name = "lm"

    def flat(self, logits: torch.Tensor, y: torch.Tensor):
        return logits.reshape(-1, logits.shape[-1]), y.reshape(-1)

    def metrics(self, loss_sum: float, top1: float, top5: float, n: float, num_classes: int) -> Dict[str, float]:
        out = super().metrics(loss_sum, top1, top5, n, num_classes)
        nll = out["test_loss"]
        # exp overflows past ~709 nats per token: an untrained model never gets there
        out["val_perplexity"] = math.exp(nll) if nll < 700 else math.inf
        return out


TASKS.add("classification", Task())
TASKS.add("lm", LanguageModelling())
