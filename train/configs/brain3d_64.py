"""The 3D method at 64^3 for accelerators (one GPU or several: the batch is sharded).

    jaxinterp train --config brain3d_64 --workdir runs/brain3d_64

The synthetic brain cohort at 64^3 (200 controls, 200 patients), the original 3D
classifier, the paper's CondConv simulator (widths 16, 32, 64, 16, 16; dense 512), delta =
12.5, Adam at 1e-4, batch 8 per direction, with the settings that raised the group-map NCC
at 32^3 from 0.06 to 0.53 (`brain3d_32`; benchmarks/RESULTS.md section 3): velocity field,
coordinate channels, zero-initialised output, running BatchNorm statistics for the cycle
pass, L1 change term, lambda_phi = 1. The paper's settings: `--set
simulator.output='displacement' --set simulator.coordinates=False --set
simulator.zero_init_output=False --set objective.lambda_phi=0.02 --set
objective.change_weight=0.0 --set objective.simulated_batch_norm='batch'`. `brain3d_32`
has since added a simulator that draws the log volume change with a full-resolution head,
a strong volume term with a weaker smoothness term, a population map tied between the
directions, total variation of the drawn growth and delta 22.5 (RESULTS.md section 3); not
yet tried at 64^3: `--set simulator.output='volume' --set simulator.head_layers=1 --set
objective.volume_weight=200.0 --set objective.lambda_phi=0.1 --set
simulator.population_map='tied' --set objective.growth_smoothness=10.0 --set
objective.growth_smoothness_norm='l1' --set objective.delta=22.5`
(`benchmarks/study64.sh`'s example trains it beside this config).

Expected run time on one H200 (measured: `python benchmarks/train_step.py --config
brain3d_64 --repeats 20`, benchmarks/RESULTS.md section 2): 6000 simulator steps of 67.9 ms,
6.8 min, and 2000 classifier steps of 10.3 ms, 0.3 min, plus the cohort's generation,
evaluations and checkpoints (on an H100, before the per-example CondConv became the
accelerators' default: 122-124 ms a simulator step). `benchmarks/study64.sh` trains several
settings side by side at this size in one accelerator call.
"""

import dataclasses

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
        simulator=dataclasses.replace(
            SimulatorConfig.paper_3d(),
            output="velocity",
            coordinates=True,
            zero_init_output=True,
        ),
        simulator_optim=OptimConfig(
            steps=6000, batch_size=8, learning_rate=1e-4, log_every=100, checkpoint_every=1000
        ),
        objective=ObjectiveConfig(
            delta=12.5, lambda_phi=1.0, change_weight=1.0, simulated_batch_norm="running"
        ),
        seed=0,
    )
