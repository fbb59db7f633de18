"""Downstream classification: the fine-tuning bundle's building blocks (Wolf et al., 2024, section 2.3).

Submodules: ``data`` (task adapters), ``transforms`` (reading slices), ``resnet``/``network`` (ResNet50 + one linear
layer, encoder loading), ``handlers`` (freeze-then-unfreeze, predictions CSV), ``metrics`` (AUC, F1, accuracy),
``folds`` (stratified group k-fold), ``protocol`` (N runs / k-fold driver), ``analysis`` (t-SNE, Grad-CAM).
"""

from __future__ import annotations

from monai_lessmore.classification import analysis, data, folds, handlers, metrics, network, protocol, transforms

__all__ = ["analysis", "data", "folds", "handlers", "metrics", "network", "protocol", "transforms"]
