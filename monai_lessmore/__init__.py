"""monai-lessmore: selective reduction of CT slices before self-supervised pre-training.

Implements "Less is More: Selective Reduction of CT Data for Self-Supervised Pre-Training of Deep Learning Models
with Contrastive Learning Improves Downstream Classification Performance" (Wolf et al., 2024) as MONAI transforms,
dataset filters, bundles and a command line.
"""

from __future__ import annotations

__version__ = "0.1.0"
