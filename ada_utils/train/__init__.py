"""Training: one configuration (:mod:`.config`), the unlabelled training pool (:mod:`.data`), one step of
the gradient solver (:mod:`.step`), one unit per method and its closed-form fit (:mod:`.methods`), the loop
(:mod:`.loop`), resumable
run folders (:mod:`.run_folder`); processes and devices are :mod:`ada_utils.distributed`'s.
"""

from ada_utils.train.config import CHOICES, METHODS, TrainConfig
from ada_utils.train.data import TrainData, prefix_training_data, training_data, validation_split
from ada_utils.train.loop import TrainingDivergedError, TrainResult, feature_maps, train

__all__ = [
    "CHOICES", "METHODS", "TrainConfig", "TrainData", "TrainResult", "TrainingDivergedError", "feature_maps",
    "prefix_training_data", "train", "training_data", "validation_split",
]
