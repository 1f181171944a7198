"""PyTorch reference of the original DeepInterpret models, warp and training steps.

Written from SPEC section 5 only (no code copied). Used for weight-import parity tests and
the speed comparison with jaxinterp. Conventions: channels-first ``(N, C, D, H, W)``;
displacement fields ``(N, 3, D, H, W)`` in voxel units, channel k moves axis k; pull-back
warp ``warped(p) = image(p + u(p))``, trilinear, zeros outside.
"""

from .models import (
    CONDCONV_IMPLS,
    Classifier3D,
    CondConv3d,
    ConvnetSkipConnection,
    as_code,
    count_parameters,
)
from .train_step import (
    CYCLE_LOSSES,
    ORIGINAL_OPTIMIZER_NAMES,
    cycle_loss,
    l1_smoothness_loss,
    logit_shift_loss,
    make_original_optimizers,
    original_hinge_loss,
    original_training_iteration,
    smoothness_loss,
    training_step,
)
from .warp import warp

__all__ = [
    "CONDCONV_IMPLS",
    "CYCLE_LOSSES",
    "ORIGINAL_OPTIMIZER_NAMES",
    "Classifier3D",
    "CondConv3d",
    "ConvnetSkipConnection",
    "as_code",
    "count_parameters",
    "cycle_loss",
    "l1_smoothness_loss",
    "logit_shift_loss",
    "make_original_optimizers",
    "original_hinge_loss",
    "original_training_iteration",
    "smoothness_loss",
    "training_step",
    "warp",
]
