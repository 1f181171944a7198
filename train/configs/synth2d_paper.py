"""The paper's synthetic 2D experiment (section 4.1) at full size, with the paper's settings.

    jaxinterp train --config synth2d_paper --workdir runs/synth2d_paper

`jaxinterp reproduce synth2d` uses this config; `synth2d` is the same experiment with the
simulator settings that make its explanations right (benchmarks/RESULTS.md, section 4).

Two groups of 512 images, 32x32, 80/20 split; classifier with convs of 2, 4, 8 features
and a hidden layer of 16; CondConv U-Net (1, 2, 4, 8) that outputs the image directly;
delta = 5, logit-shift and cycle losses only.
"""

from jaxinterp.nn import ClassifierConfig, SimulatorConfig
from jaxinterp.objective import ObjectiveConfig
from train.config import DataConfig, OptimConfig, TrainConfig


def get_config() -> TrainConfig:
    return TrainConfig(
        name="synth2d_paper",
        data=DataConfig(kind="synth2d", n_per_group=512, test_fraction=0.2),
        classifier=ClassifierConfig.paper_2d(),
        classifier_optim=OptimConfig(
            steps=1500, batch_size=64, learning_rate=3e-3, log_every=100, checkpoint_every=500
        ),  # fmt: skip
        simulator=SimulatorConfig.paper_2d(),
        simulator_optim=OptimConfig(
            steps=2000, batch_size=32, learning_rate=1e-3, log_every=100, checkpoint_every=500
        ),  # fmt: skip
        objective=ObjectiveConfig(delta=5.0, cycle_norm="l2", lambda_phi=0.0),
        seed=0,
    )
