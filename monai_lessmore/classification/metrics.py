"""AUC, F1 and accuracy of the downstream evaluation, as MONAI / ignite metric handlers.

Wolf et al. (2024), section 2.3: "The mean and standard deviation of accuracy, AUC score, and F1-score over the five
runs are reported". Definitions used here (the paper does not spell them out):

* AUC - ``monai.handlers.ROCAUC``: binary tasks use the probability of class 1; multi-class tasks the one-vs-rest
  macro average over classes (scikit-learn's ``roc_auc_score(..., multi_class="ovr", average="macro")``).
* F1 - ``ignite.metrics.Fbeta(beta=1)``: the F1 of class 1 for binary tasks, the unweighted mean of per-class F1
  (macro) for multi-class tasks; predictions are the arg-max class.
* accuracy - ``ignite.metrics.Accuracy`` on the arg-max class.

The output transforms below take the evaluator's batch output (``decollate=False``): ``pred`` logits ``(B, C)`` and
``label`` class indices ``(B,)``. They are small classes with JSON-serialisable arguments so that configs can build
them: the metrics themselves are declared once, in the fine-tuning bundle's ``train.json`` (``key_metric`` and
``additional_metrics``), and used for validation, test and ``evaluate.json``.
"""

from __future__ import annotations

from typing import Any

import torch
from ignite.metrics import Fbeta, Metric, Precision, Recall

__all__ = ["ProbabilityOutput", "AUCOutput", "F1Output", "f1_metric"]


def _pred_label(output: Any) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(output, (list, tuple)) and output and isinstance(output[0], dict):  # decollated output
        pred = torch.stack([torch.as_tensor(o["pred"]) for o in output])
        label = torch.stack([torch.as_tensor(o["label"]).reshape(()) for o in output])
    else:
        pred, label = output["pred"], output["label"]
    return torch.softmax(torch.as_tensor(pred).float(), dim=1), torch.as_tensor(label).reshape(-1).long()


class ProbabilityOutput:
    """``(probabilities (B, C), labels (B,))`` for ignite's multi-class metrics (accuracy)."""

    def __call__(self, output: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return _pred_label(output)


class _PerClassCount:
    """Base of the output transforms that depend on the number of classes (validated once, here)."""

    def __init__(self, num_classes: int) -> None:
        if int(num_classes) < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.num_classes = int(num_classes)


class AUCOutput(_PerClassCount):
    """``(scores, one-hot labels)`` for ``monai.handlers.ROCAUC``: class-1 probability when ``num_classes == 2``.

    Args:
        num_classes: number of classes (>= 2).
    """

    def __call__(self, output: Any) -> tuple[torch.Tensor, torch.Tensor]:
        probs, label = _pred_label(output)
        if self.num_classes == 2:
            return probs[:, 1:], label[:, None].float()
        return probs, torch.nn.functional.one_hot(label, self.num_classes).float()


class F1Output(_PerClassCount):
    """Inputs for ``ignite.metrics.Fbeta``: binary ``(pred class, label)`` or multi-class ``(probs, label)``.

    Args:
        num_classes: number of classes (>= 2).
    """

    def __call__(self, output: Any) -> tuple[torch.Tensor, torch.Tensor]:
        probs, label = _pred_label(output)
        if self.num_classes == 2:
            return probs.argmax(dim=1), label
        return probs, label


def f1_metric(num_classes: int) -> Metric:
    """F1 of class 1 (binary) or macro F1 (multi-class) as an ``ignite.metrics.Fbeta``.

    Args:
        num_classes: number of classes.
    """
    f1_out = F1Output(num_classes)
    precision = Precision(average=False, output_transform=f1_out, is_multilabel=False)
    recall = Recall(average=False, output_transform=f1_out, is_multilabel=False)
    # binary Precision/Recall give the class-1 score, multi-class ones a per-class vector: the mean is macro F1
    return Fbeta(beta=1.0, average=True, precision=precision, recall=recall)
