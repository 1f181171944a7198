"""The paper's 3D setup at 64^3 for accelerators (one GPU or several: the batch is sharded).

    jaxinterp train --config brain3d_64 --workdir runs/brain3d_64

The synthetic brain cohort at 64^3 (200 controls, 200 patients), the original 3D
classifier, the paper's CondConv simulator (widths 16, 32, 64, 16, 16; dense 512;
displacement output), delta = 12.5, lambda_phi = 0.02, Adam at 1e-4, batch 8 per
direction. Expected run time on one H100: not yet measured (the per-step time of
`benchmarks/train_step.py --size 64` times 6000 steps, plus the classifier).
"""

from jaxinterp.nn import ClassifierConfig, SimulatorConfig
from jaxinterp.objective import ObjectiveConfig
from train.config import DataConfig, OptimConfig, TrainConfig


def get_config() -> TrainConfig:
    return TrainConfig(
        name="brain3d_64",
        data=DataConfig(kind="synth3d", n_per_group=200, shape=(64, 64, 64)),
        classifier=ClassifierConfig.original(),
        classifier_optim=OptimConfig(
            steps=2000, batch_size=32, learning_rate=1e-3, log_every=100, checkpoint_every=500
        ),
        simulator=SimulatorConfig.paper_3d(),
        simulator_optim=OptimConfig(
            steps=6000, batch_size=8, learning_rate=1e-4, log_every=100, checkpoint_every=1000
        ),
        objective=ObjectiveConfig(delta=12.5, lambda_phi=0.02),
        seed=0,
    )
