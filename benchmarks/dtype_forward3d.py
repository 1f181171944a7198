"""A trained simulator run in float32 and in bfloat16 on the same scans: does bfloat16
inference change its maps?

    python benchmarks/dtype_forward3d.py --config brain3d_32 --workdir runs/b32_sm \
        --set simulator_optim.steps=400 --n 8

Loads the workdir's simulator (trained in the config's dtype), simulates the first ``n``
held-out controls (inject) and patients (remove) of the config's own data with the same
parameters computed in float32 and in bfloat16, and prints per direction the largest
growth (or field) difference and the NCC of each scan's log volume change maps. Maps that
agree mean bfloat16 arithmetic is not what changes a simulator trained in bfloat16: its
training is.
"""

from __future__ import annotations

import argparse

import jax.numpy as jnp
import numpy as np

from jaxinterp import log_volume_change
from jaxinterp.metrics import ncc
from jaxinterp.nn import Simulator
from train.config import add_config_arguments, load_config
from train.datasets import load_dataset
from train.simulator import load_simulator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_config_arguments(parser, workdir_help="holds the trained simulator")
    parser.add_argument("--n", type=int, default=8, help="scans per direction")
    args = parser.parse_args()
    config = load_config(args.config, args.overrides)
    data = load_dataset(config.data, seed=config.seed)
    model, variables = load_simulator(config, args.workdir, data.images[:2])
    for task, label in ((0, 0), (1, 1)):
        images = jnp.asarray(data.images[data.subset("test", label)[: args.n]])
        outs = {}
        for name, dtype in (("float32", None), ("bfloat16", jnp.bfloat16)):
            out = Simulator(model.config, dtype=dtype).apply(
                variables, images, jnp.full((len(images),), task), train=False
            )
            raw = out.growth if out.growth is not None else out.displacement
            outs[name] = (np.asarray(raw), log_volume_change(out.displacement))
        (raw32, lvc32), (raw16, lvc16) = outs["float32"], outs["bfloat16"]
        per_scan = np.asarray(ncc(lvc32, lvc16, batch_dims=1))
        print(f"{('inject', 'remove')[task]}: {len(images)} scans, largest |output| "
              f"{np.abs(raw32).max():.3f}, largest difference {np.abs(raw32 - raw16).max():.4f}, "
              f"NCC of the log volume change maps min {per_scan.min():.4f} "
              f"median {np.median(per_scan):.4f}")  # fmt: skip


if __name__ == "__main__":
    main()
