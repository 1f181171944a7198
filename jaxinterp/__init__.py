"""jaxinterp: explain what a medical-image classifier learned, as anatomy.

A conditional-convolution simulator warps a control's image until the classifier calls it
diseased (and a patient's back); the log Jacobian determinant of the warp says where tissue
grew or shrank. Conventions (channels-last arrays, voxel-unit pull-back displacement fields,
the sign of the log volume change) are stated in ``jaxinterp.warp`` and
``jaxinterp.jacobian``.
"""

from jaxinterp import losses, nn, saliency
from jaxinterp.jacobian import (
    displacement_jacobian,
    divergence,
    folding_fraction,
    jacobian_determinant,
    log_volume_change,
    log_volume_change_on_input,
)
from jaxinterp.losses import (
    INJECT,
    REMOVE,
    bce_shift_loss,
    cycle_loss,
    logit_shift_loss,
    smoothness_loss,
)
from jaxinterp.metrics import ncc
from jaxinterp.objective import ObjectiveConfig, simulator_objective
from jaxinterp.warp import (
    compose,
    identity_grid,
    integrate_velocity,
    invert_displacement,
    poisson_velocity,
    warp,
)

__version__ = "0.1.0"

__all__ = [
    "INJECT",
    "ObjectiveConfig",
    "REMOVE",
    "bce_shift_loss",
    "compose",
    "cycle_loss",
    "displacement_jacobian",
    "divergence",
    "folding_fraction",
    "identity_grid",
    "integrate_velocity",
    "invert_displacement",
    "poisson_velocity",
    "jacobian_determinant",
    "log_volume_change",
    "log_volume_change_on_input",
    "logit_shift_loss",
    "losses",
    "ncc",
    "nn",
    "saliency",
    "simulator_objective",
    "smoothness_loss",
    "warp",
]
