"""jaxinterp's training library: the classifier P and the simulator G.

Everything a notebook needs is importable from here; the ``jaxinterp`` command
(``train.cli``) is a thin layer over ``train_classifier`` and ``train_simulator``.
"""

from train.classifier import train_classifier
from train.config import DataConfig, TrainConfig, load_config
from train.simulator import train_simulator

__all__ = ["DataConfig", "TrainConfig", "load_config", "train_classifier", "train_simulator"]
