"""benchmarks/population_map3d.py: the map alone's warp, and the network's share of a growth."""

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.population_map3d import map_change, network_share
from jaxinterp.jacobian import log_volume_change
from jaxinterp.nn import Simulator, SimulatorConfig


def test_map_change_is_the_simulators_warp_when_the_network_draws_nothing():
    """With the network's output layer at zero the simulator's growth is its population map,
    so its log volume change must be `map_change` of that map."""
    config = SimulatorConfig(
        features=(2, 4),
        bottleneck=8,
        output="volume",
        coordinates=True,
        zero_init_output=True,
        population_map=True,
        integration_steps=5,
    )
    sim = Simulator(config)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 8, 8, 8, 1)), jnp.float32)
    v = sim.init({"params": jax.random.key(0)}, x, jnp.zeros(2))
    grid = np.stack(np.meshgrid(*[np.arange(8.0)] * 3, indexing="ij"))
    bump = 0.3 * np.exp(-((grid - 3.5) ** 2).sum(0) / 4.0)
    maps = np.stack([bump, -0.5 * bump])[..., None].astype(np.float32)
    out = sim.apply(
        {**v, "params": {**v["params"], "population_map": jnp.asarray(maps)}}, x, jnp.array([0, 1])
    )
    want = np.asarray(log_volume_change(out.displacement))
    for task in (0, 1):
        np.testing.assert_allclose(map_change(maps[task, ..., 0], 5), want[task], atol=1e-5)
    assert want[0][3, 3, 3] > 0.1 and want[1][3, 3, 3] < -0.05  # grows, then shrinks


def test_network_share_counts_only_the_brain():
    brain = np.zeros((4, 4, 4), bool)
    brain[1:3] = True
    map_growth = np.where(brain, 1.0, 0.0)
    growth = np.stack([map_growth, 3.0 * map_growth, 0.0 * map_growth + 0.5])
    growth[:, 0] += 100.0  # outside the brain: ignored
    share = network_share(growth, map_growth, brain)
    # the map alone; three times it (the network drew 2 of 3); a flat 0.5 (|0.5 - 1| / 0.5)
    np.testing.assert_allclose(share, [0.0, 2.0 / 3.0, 1.0])
