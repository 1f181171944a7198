"""The 3D method on the synthetic brain cohort at 32^3, sized for a 2-core CPU.

    jaxinterp train --config brain3d_32 --workdir runs/brain3d_32

Cohort from the MNI152 template (jaxinterp.synth3d, 100 controls and 100 patients with
ventricle enlargement, hippocampal or frontal atrophy), the original 3D classifier, and
a CondConv simulator of the paper's design, narrowed for the CPU (widths 8, 16, 32, 16;
dense 256), that outputs a displacement field. delta = 12.5, lambda_phi = 0.02 as in the
paper. Takes about 20 minutes on a 2-core CPU (see benchmarks/RESULTS.md, section 3).
"""

from jaxinterp.nn import ClassifierConfig, SimulatorConfig
from jaxinterp.objective import ObjectiveConfig
from train.config import DataConfig, OptimConfig, TrainConfig


def get_config() -> TrainConfig:
    return TrainConfig(
        name="brain3d_32",
        data=DataConfig(kind="synth3d", n_per_group=100, shape=(32, 32, 32)),
        classifier=ClassifierConfig.original(),
        classifier_optim=OptimConfig(
            steps=400, batch_size=16, learning_rate=1e-3, log_every=50, checkpoint_every=200
        ),
        simulator=SimulatorConfig(features=(8, 16, 32, 16), bottleneck=256),
        simulator_optim=OptimConfig(
            steps=300, batch_size=4, learning_rate=1e-4, log_every=25, checkpoint_every=100
        ),
        objective=ObjectiveConfig(delta=12.5, lambda_phi=0.02),
        seed=0,
    )
