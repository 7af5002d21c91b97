"""regrow.train.tasks: the loss and figures of classification and next-token prediction."""
import math

import pytest
import torch
import torch.nn.functional as F

from regrow.train.tasks import TASKS, top_k_hits


def test_registry():
    assert TASKS.names() == ["classification", "lm"]
    with pytest.raises(ValueError, match="unknown task 'seg'; allowed: classification, lm"):
        TASKS.get("seg")


def test_classification_is_plain_cross_entropy_and_top_k():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 2.0], [0.0, 2.0, 1.0]])
    y = torch.tensor([0, 0, 2])
    task = TASKS.get("classification")
    assert torch.equal(task.loss(logits, y), F.cross_entropy(logits, y))
    assert task.hits(logits, y, 1) == 1 and task.hits(logits, y, 2) == 2 and task.hits(logits, y, 9) == 3
    m = task.metrics(6.0, 1.0, 2.0, 3, num_classes=3)
    assert m == {"test_loss": 2.0, "test_acc": 1 / 3} and "val_perplexity" not in m
    assert "test_top5" in task.metrics(6.0, 1.0, 2.0, 3, num_classes=10)


def test_lm_loss_is_the_mean_next_token_nll_and_perplexity_its_exp():
    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(2, 5, 7, generator=g), torch.randint(0, 7, (2, 5), generator=g)
    task = TASKS.get("lm")
    nll = -torch.log_softmax(logits, -1).gather(-1, y[..., None]).squeeze(-1)  # [B, T]
    assert task.loss(logits, y).item() == pytest.approx(nll.mean().item(), rel=1e-6)
    total = task.loss(logits, y, reduction="sum").item()
    assert total == pytest.approx(nll.sum().item(), rel=1e-6)
    hits = task.hits(logits, y, 1)
    assert hits == int((logits.argmax(-1) == y).sum())
    m = task.metrics(total, hits, task.hits(logits, y, 5), y.numel(), num_classes=7)
    assert m["val_perplexity"] == pytest.approx(math.exp(nll.mean().item()), rel=1e-6)
    assert m["test_acc"] == hits / 10
    # a uniform model's perplexity is the vocabulary size
    flat = task.metrics(10 * math.log(7), 0, 0, 10, num_classes=7)
    assert flat["val_perplexity"] == pytest.approx(7.0)
    assert task.metrics(1e6, 0, 0, 1, num_classes=7)["val_perplexity"] == math.inf


def test_top_k_hits_with_k_above_the_classes():
    assert top_k_hits(torch.eye(3), torch.tensor([0, 1, 0]), 5) == 3
