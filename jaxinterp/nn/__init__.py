"""Flax Linen models: CondConv, the simulator G and the classifier P."""

from jaxinterp.nn.classifier import Classifier, ClassifierConfig
from jaxinterp.nn.condconv import CondConv, conv_nd
from jaxinterp.nn.simulator import Simulator, SimulatorConfig, SimulatorOutput, UNet

__all__ = [
    "Classifier",
    "ClassifierConfig",
    "CondConv",
    "Simulator",
    "SimulatorConfig",
    "SimulatorOutput",
    "UNet",
    "conv_nd",
]
