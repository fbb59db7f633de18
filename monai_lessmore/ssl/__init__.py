"""Self-supervised pre-training of a ResNet50 on (reduced) CT slices: SwAV, MoCo v2 and SparK (paper section 2.2,
appendices A-C), as losses, heads, transforms, optimisers, training steps and handlers of MONAI's
``SupervisedTrainer``, assembled by the bundle ``bundles/lessmore_ssl_pretrain``."""

from __future__ import annotations

from monai_lessmore.ssl.backbone import ENCODER_DIM, resnet50_encoder, unwrap
from monai_lessmore.ssl.data import build_pretrain_datalist, check_batch_size
from monai_lessmore.ssl.engine import METHODS, MoCoStep, SparKStep, SSLStep, SSLTrainer, SwAVStep, as_bool, build_loader
from monai_lessmore.ssl.export import encoder_state_dict, export_encoder, export_from_checkpoint
from monai_lessmore.ssl.moco import MoCoLoss, MoCoModel, MoCoProjectionHead, concat_all_gather, update_momentum
from monai_lessmore.ssl.optim import LAMB, LARS, param_groups_exclude_bias_and_norm, warmup_cosine_schedule
from monai_lessmore.ssl.queue import FeatureQueue
from monai_lessmore.ssl.settings import METHOD_SETTINGS, check_method_settings
from monai_lessmore.ssl.swav import SwAVLoss, SwAVModel, SwAVProjectionHead, SwAVPrototypes, sinkhorn
from monai_lessmore.ssl.transforms import MakeViewsd, MoCoTransform, SparKTransform, SwAVTransform

__all__ = [
    "ENCODER_DIM", "resnet50_encoder", "unwrap", "build_pretrain_datalist", "check_batch_size",
    "METHODS", "SSLTrainer", "SSLStep", "SwAVStep", "MoCoStep", "SparKStep", "as_bool", "build_loader",
    "METHOD_SETTINGS", "check_method_settings",
    "encoder_state_dict", "export_encoder", "export_from_checkpoint",
    "MoCoLoss", "MoCoModel", "MoCoProjectionHead", "concat_all_gather", "update_momentum",
    "LAMB", "LARS", "param_groups_exclude_bias_and_norm", "warmup_cosine_schedule", "FeatureQueue",
    "SwAVLoss", "SwAVModel", "SwAVProjectionHead", "SwAVPrototypes", "sinkhorn",
    "MakeViewsd", "MoCoTransform", "SparKTransform", "SwAVTransform",
]
