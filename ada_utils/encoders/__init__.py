"""Encoders: timm backbones with official preprocessing, official checkpoint formats, cached embedding.

``load_encoder`` (:mod:`.backbones`) builds an :class:`Encoder` from a name and a local weights file
(:mod:`.checkpoints` reads DINO, MoCo v3, timm and our own formats with exact key checks);
``embed_images`` (:mod:`.embed`) embeds image lists once per (encoder, preprocessing), sharded under torchrun;
``embed_benchmark`` (:mod:`.features`) embeds every test image and distractor of an AbC-format root.
"""

from ada_utils.encoders.backbones import Encoder, WeightsNotFoundError, get_recipe, list_encoders, load_encoder
from ada_utils.encoders.checkpoints import CheckpointError, save_encoder_checkpoint
from ada_utils.encoders.embed import Features, embed_images, load_features
from ada_utils.encoders.features import BenchmarkFeatures, CaseFeatures, embed_benchmark

__all__ = [
    "BenchmarkFeatures", "CaseFeatures", "CheckpointError", "Encoder", "Features", "WeightsNotFoundError",
    "embed_benchmark", "embed_images", "get_recipe", "list_encoders", "load_encoder", "load_features",
    "save_encoder_checkpoint",
]
