"""Downstream classification: the fine-tuning bundle's building blocks (Wolf et al., 2024, section 2.3).

Submodules: ``data`` (task adapters), ``transforms`` (reading slices), ``network`` (ResNet50 + one linear layer,
encoder loading), ``handlers`` (freeze-then-unfreeze, predictions CSV), ``metrics`` (the output transforms of AUC,
F1 and accuracy; the metrics themselves are declared in the bundle's ``train.json``), ``folds`` (stratified (group)
k-fold with scikit-learn), ``protocol`` (N runs / k-fold driver), ``analysis`` (t-SNE, Grad-CAM).
"""

from __future__ import annotations

from monai_lessmore.classification import analysis, data, folds, handlers, metrics, network, protocol, transforms

__all__ = ["analysis", "data", "folds", "handlers", "metrics", "network", "protocol", "transforms"]
