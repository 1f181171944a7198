"""benchmarks/population_map3d.py: the map alone's warp, and the network's share of a growth."""

import jax
import jax.numpy as jnp
import numpy as np
import scipy.ndimage

from benchmarks.population_map3d import input_frame_change, map_change, network_share
from jaxinterp.jacobian import log_volume_change
from jaxinterp.nn import Simulator, SimulatorConfig
from jaxinterp.warp import integrate_velocity, poisson_velocity


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


def test_input_frame_change_puts_each_value_where_its_tissue_starts():
    """At input voxel ``x + u(x)`` (where the tissue of simulated voxel ``x`` comes from) the
    input-frame map must read what the simulated-frame map reads at ``x``; and for a tied
    map the remove growth's input-frame map is the inject growth's simulated-frame map,
    negated (the sign flip that shows a remove map in the disease's direction undoes it)."""
    grid = np.stack(np.meshgrid(*[np.arange(16.0)] * 3, indexing="ij"))
    growth = 0.8 * np.exp(-((grid - 7.5) ** 2).sum(0) / 18.0)
    field = np.asarray(integrate_velocity(poisson_velocity(jnp.asarray(growth)[None], ndim=3)))[0]
    simulated = map_change(growth, 7)
    on_input = input_frame_change(growth[None], 7)[0]
    source = grid + np.moveaxis(field, -1, 0)
    read = scipy.ndimage.map_coordinates(on_input, source.reshape(3, -1), order=3)
    inner = (slice(4, 12),) * 3
    assert np.abs(field).max() > 0.3 and simulated[7, 7, 7] > 0.2  # the warp moves
    error = np.abs(read.reshape(simulated.shape) - simulated)[inner].max()
    apart = np.abs(on_input - simulated)[inner].max()  # the two frames, voxel for voxel
    assert apart > 0.05 and error < 0.3 * apart, (error, apart)
    np.testing.assert_allclose(input_frame_change(-growth[None], 7)[0], -simulated, atol=1e-6)
