"""The simulator G(image, task): one conditional-convolution U-Net for both tasks.

Architecture (SPEC section 5; the authors' ``Convnet_SkipConnection`` generalised to any
depth and to 2D). With encoder widths ``f_0 .. f_{L-1}``:

* encoder: ``d_0 = conv(x)``; ``d_i = conv(maxpool(act(BN(d_{i-1}))))``;
* bottleneck: flatten ``d_{L-1}`` in ``(C, *spatial)`` order -> Dense(``bottleneck``) ->
  append the task code -> ReLU -> Dense back to the flat size -> reshape;
* decoder, skips ADDED: ``u_{L-1} = conv(z) + d_{L-1}``; going up one level,
  ``u_{i-1} = up(act(BN(conv(u_i)))) + d_{i-1}`` where the conv is present only when the
  channel counts differ (the original's ``up1_noconv``); ``up`` is nearest x2;
* head (``head_layers`` > 0, none in the paper): ``u_0 <- u_0 + conv(act(BN(u_0)))`` at
  full resolution, each a residual pre-activation layer of width ``f_0``. Without it the
  output is linear in ``u_0``: a sum of nearest-upsampled (blocky) decoder features and
  one convolution of the input, so nothing at full resolution can gate a map by what the
  image shows there (draw growth inside a dark ventricle and not beside it);
* output: ``conv(u_0)`` to ``ndim`` channels (a displacement or velocity field, voxel units,
  channel ``k`` = axis ``k``), to one channel (a ``"volume"`` output: the log volume change
  per voxel, from which the velocity follows) or to the image's channels (the 2D paper's
  direct output).

Every conv is a ``CondConv`` routed by the task, except in the paper's ablation
(``separate_networks=True``): two plain-conv U-Nets, one per task.

Task codes in the API are always ``0`` = inject disease, ``1`` = remove it; the numbers the
network sees are ``SimulatorConfig.task_codes`` (the original code used -1 and +1).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Literal, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxinterp.nn.condconv import CondConv
from jaxinterp.warp import integrate_velocity, poisson_velocity, warp

IMAGE_OUTPUTS = ("image", "residual", "gain")  # outputs that are images, not fields
GAIN_LIMIT = 4.0  # a "gain" output scales a voxel by at most exp(4) = 55 either way
# ``SimulatorConfig.population_map``'s values: for each task (0 = inject, 1 = remove), the
# row of the ``population_map`` parameter it draws and that row's sign, or None (no map)
POPULATION_MAPS = {
    False: (None, None),
    True: ((0, 1.0), (1, 1.0)),
    "inject": ((0, 1.0), None),
    "remove": (None, (1, 1.0)),
    "tied": ((0, 1.0), (0, -1.0)),  # one map: remove draws its negative, inject's inverse
}


@dataclasses.dataclass(frozen=True)
class SimulatorConfig:
    """Architecture of ``Simulator``."""

    ndim: int = 3  # spatial dimensions (2 or 3)
    features: tuple[int, ...] = (16, 32, 64, 16, 16)  # encoder widths, one level each
    bottleneck: int = 512  # width of the dense bottleneck
    output: Literal["displacement", "velocity", "volume", "image", "residual", "gain"] = (
        "displacement"
    )
    integration_steps: int = 7  # scaling-and-squaring steps for "velocity" and "volume"
    num_experts: int = 3  # CondConv experts K
    routing_dropout: float = 0.1  # CondConv routing dropout (training only)
    condconv_bias: Literal["shared", "mixed"] = "shared"  # original: one bias for all experts
    # how CondConv computes (the same function): "auto" = the faster on the backend that runs
    # it (`jaxinterp.nn.condconv.resolve_implementation`)
    condconv_implementation: Literal["auto", "experts", "per_example"] = "auto"
    separate_networks: bool = False  # ablation: two plain-conv networks, one per task
    batch_norm: bool = True  # BatchNorm in the encoder and decoder stacks
    negative_slope: float = 0.1  # LeakyReLU slope
    task_codes: tuple[float, float] = (0.0, 1.0)  # numbers fed to the net for inject, remove
    warp_mode: Literal["zeros", "edge"] = "zeros"  # what the warp reads outside the volume
    coordinates: bool = False  # feed each voxel's position (in [-1, 1] per axis) as channels
    zero_init_output: bool = False  # output layer starts at 0: G starts as the identity
    head_layers: int = 0  # residual conv layers at full resolution before the output layer
    # A learned map per task, one value per voxel and output channel, added to the network's
    # raw output (zero at the start): what every scan of a direction shares is drawn at full
    # resolution, free of the network's blur, and the network draws each scan's departure
    # from it. Trained by its own optimiser (`OptimConfig.population_learning_rate`).
    # True: a map for both tasks; "inject" or "remove": for that task only (the other's
    # part of the parameter stays at zero and the network alone draws that direction);
    # "tied": one map, drawn by inject and negated by remove (the disease is one change and
    # removing it undoes it: for a "volume" or "velocity" output the negated map is the
    # inverse warp), trained by both directions.
    population_map: bool | Literal["inject", "remove", "tied"] = False
    # Field outputs: the warp's backward pass is written out whole before the output layer's
    # backward reductions read it (`gradient_barrier`). Speed only, not the function: without
    # it XLA fused the warp's and the smoothness term's backward into the output bias's
    # gradient reduction, two kernels of 8 ms per paper step on an H200 (64^3, batch 8,
    # 76.9 -> 61.6 ms; benchmarks/RESULTS.md section 2).
    field_barrier: bool = True

    def __post_init__(self):
        if self.population_map not in tuple(POPULATION_MAPS):
            raise ValueError(
                f"simulator.population_map={self.population_map!r}: give True (both tasks), "
                "False, 'inject', 'remove' or 'tied'"
            )

    @property
    def population_tasks(self) -> tuple[int, ...]:
        """The task codes (0 = inject, 1 = remove) that get a population map."""
        return tuple(t for t, m in enumerate(POPULATION_MAPS[self.population_map]) if m)

    @classmethod
    def paper_2d(cls) -> SimulatorConfig:
        """Synthetic 2D experiment: widths 1, 2, 4, 8, bottleneck 64, outputs the image."""
        return cls(ndim=2, features=(1, 2, 4, 8), bottleneck=64, output="image")

    @classmethod
    def paper_3d(cls) -> SimulatorConfig:
        """The paper's 3D simulator: widths 16, 32, 64, 16, 16, bottleneck 512, a field."""
        return cls()

    @classmethod
    def original(cls) -> SimulatorConfig:
        """The authors' code layer for layer (1,680,066 parameters at 64^3), codes -1/+1."""
        return cls(task_codes=(-1.0, 1.0))


def task_maps(maps: jax.Array, config: SimulatorConfig) -> jax.Array:
    """The map each task draws ``(2, ...)`` from the ``population_map`` parameter ``maps``
    (``(2, ...)``): its row times its sign, zero for a task without one (no gradient reaches
    a row no task draws)."""
    rows = [
        maps[m[0]] * m[1] if m else jnp.zeros_like(maps[0])
        for m in POPULATION_MAPS[config.population_map]
    ]
    return jnp.stack(rows)


class SimulatorOutput(NamedTuple):
    image: jax.Array  # the simulated image, (N, *spatial, C)
    displacement: jax.Array | None  # the pull-back field (N, *spatial, ndim); None for images
    log_gain: jax.Array | None = None  # a "gain" output's log scale per voxel (N, *spatial, C)
    growth: jax.Array | None = None  # a "volume" output's log volume change rate (N, *spatial)


@jax.custom_vjp
def gradient_barrier(x: jax.Array) -> jax.Array:
    """The identity, whose cotangent passes ``jax.lax.optimization_barrier``: XLA computes
    the gradient arriving here as one array, and fuses none of its producers into the
    operations that consume it (the layers before)."""
    return x


gradient_barrier.defvjp(lambda x: (x, None), lambda _, g: (jax.lax.optimization_barrier(g),))


def _upsample(x: jax.Array) -> jax.Array:
    for axis in range(1, x.ndim - 1):
        x = jnp.repeat(x, 2, axis=axis)
    return x


class UNet(nn.Module):
    """One conditional (or plain) conv U-Net; returns the raw output map."""

    config: SimulatorConfig
    out_channels: int
    conditional: bool = True  # CondConv layers; False = plain convolutions
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array, code: jax.Array, *, train: bool = False) -> jax.Array:
        cfg = self.config
        nd = cfg.ndim
        widths = cfg.features
        levels = len(widths)
        scale = 2 ** (levels - 1)
        if x.ndim != nd + 2 or any(s % scale for s in x.shape[1:-1]):
            raise ValueError(
                f"Simulator({nd}D, {levels} levels) expects (N, *spatial, C) with {nd} spatial "
                f"axes divisible by {scale}, got shape {x.shape}"
            )

        def conv(features: int, name: str, h: jax.Array, zero: bool = False) -> jax.Array:
            init = {"kernel_init": nn.initializers.zeros} if zero else {}
            if self.conditional:
                layer = CondConv(
                    features,
                    num_experts=cfg.num_experts,
                    routing_dropout=cfg.routing_dropout,
                    bias=cfg.condconv_bias,
                    implementation=cfg.condconv_implementation,
                    dtype=self.dtype,
                    name=name,
                    **init,
                )
                return layer(h, code, deterministic=not train)
            return nn.Conv(
                features, (3,) * nd, padding="SAME", dtype=self.dtype, name=name, **init
            )(h)

        def norm_act(name: str, h: jax.Array) -> jax.Array:
            if cfg.batch_norm:
                h = nn.BatchNorm(  # in float32 whatever the compute dtype (mixed precision)
                    use_running_average=not train,
                    momentum=0.9,
                    epsilon=1e-5,
                    dtype=jnp.float32,
                    name=name,
                )(h)
            return nn.leaky_relu(h, cfg.negative_slope)

        pool = functools.partial(nn.max_pool, window_shape=(2,) * nd, strides=(2,) * nd)

        skips = [conv(widths[0], "enc0", x)]
        for i in range(1, levels):
            h = pool(norm_act(f"enc{i}_bn", skips[-1]))
            skips.append(conv(widths[i], f"enc{i}", h))

        bottom = skips[-1]
        n = bottom.shape[0]
        channels_first = jnp.moveaxis(bottom, -1, 1)
        flat = channels_first.reshape(n, -1)
        z = nn.Dense(cfg.bottleneck, dtype=self.dtype, name="bottleneck_in")(flat)
        z = jnp.concatenate([z, code[:, None].astype(z.dtype)], axis=-1)
        z = nn.relu(z)
        z = nn.Dense(flat.shape[-1], dtype=self.dtype, name="bottleneck_out")(z)
        z = jnp.moveaxis(z.reshape(channels_first.shape), 1, -1)

        u = conv(widths[-1], f"dec{levels - 1}", z) + skips[-1]
        for i in range(levels - 1, 0, -1):
            h = u
            if h.shape[-1] != widths[i - 1]:
                h = conv(widths[i - 1], f"dec{i - 1}", h)
            u = _upsample(norm_act(f"dec{i - 1}_bn", h)) + skips[i - 1]
        for j in range(cfg.head_layers):
            u = u + conv(widths[0], f"head{j}", norm_act(f"head{j}_bn", u))
        out = conv(self.out_channels, "output", u, zero=cfg.zero_init_output)
        return out.astype(jnp.float32)


def _with_coordinates(x: jax.Array) -> jax.Array:
    """``x`` ``(N, *spatial, C)`` with ``ndim`` more channels: each voxel's index along each
    axis mapped linearly to [-1, 1]. Convolutions are translation-equivariant, so without
    them the network cannot tell where it is, only what it sees; a disease effect is tied to
    a place (in the 2D benchmark, two of the four quadrants; in 3D, anatomy)."""
    spatial = x.shape[1:-1]
    axes = [jnp.linspace(-1.0, 1.0, n, dtype=x.dtype) for n in spatial]
    grid = jnp.stack(jnp.meshgrid(*axes, indexing="ij"), axis=-1)
    grid = jnp.broadcast_to(grid, (x.shape[0], *spatial, len(spatial)))
    return jnp.concatenate([x, grid], axis=-1)


class Simulator(nn.Module):
    """G(image, task) -> ``SimulatorOutput(image, displacement)``.

    ``task`` is ``(N,)`` (or a scalar) of codes 0 = inject disease, 1 = remove it. For a
    field output the simulated image is ``warp(x, displacement)`` (pull-back, voxel units);
    a ``"velocity"`` output is integrated by scaling and squaring first, so the warp cannot
    fold. A ``"volume"`` output is one channel, the rate of log volume change per voxel
    (positive = growth); the velocity is the curl-free field with that divergence
    (`jaxinterp.warp.poisson_velocity`: the volume changes where the network says and
    nowhere else, the tissue around moves without changing volume), then integrated like
    a ``"velocity"`` output. For an ``"image"`` output (the 2D paper) the network's output
    is the simulated image; a ``"residual"`` output is added to the input (``G(x) = x +
    net(x)``, so the identity is free and the network only has to make the change); a
    ``"gain"`` output scales the input voxel by voxel (``G(x) = x * exp(L tanh(net(x) /
    L))``, ``L = GAIN_LIMIT``: it can strengthen or weaken what is there, not paint on an
    empty background). ``displacement`` is None for these three. With ``population_map``
    a learned per-task map (the parameter ``population_map``, ``(2, *spatial, channels)``;
    what each task draws of it: `task_maps`) is added to the network's raw output before
    any of this.
    """

    config: SimulatorConfig
    dtype: Any = None  # compute dtype of convs and dense layers (e.g. jnp.bfloat16)

    @nn.compact
    def __call__(self, x: jax.Array, task: jax.Array, *, train: bool = False) -> SimulatorOutput:
        cfg = self.config
        task = jnp.broadcast_to(jnp.asarray(task), (x.shape[0],))
        code = jnp.where(task == 0, cfg.task_codes[0], cfg.task_codes[1]).astype(jnp.float32)
        out_channels = {"volume": 1}.get(cfg.output, cfg.ndim)  # a field's components
        if cfg.output in IMAGE_OUTPUTS:
            out_channels = x.shape[-1]
        make = functools.partial(UNet, cfg, out_channels, dtype=self.dtype)
        inputs = _with_coordinates(x) if cfg.coordinates else x
        if cfg.separate_networks:
            inject = make(conditional=False, name="inject_net")(inputs, code, train=train)
            remove = make(conditional=False, name="remove_net")(inputs, code, train=train)
            select = (task == 0).reshape(-1, *(1,) * (x.ndim - 1))
            out = jnp.where(select, inject, remove)
        else:
            out = make(name="net")(inputs, code, train=train)
        if cfg.population_map:
            out = out + self._population_map(x, task, out_channels)

        if cfg.output == "image":
            return SimulatorOutput(out.astype(x.dtype), None)
        if cfg.output == "residual":
            return SimulatorOutput((x + out).astype(x.dtype), None)
        if cfg.output == "gain":
            log_gain = GAIN_LIMIT * jnp.tanh(out / GAIN_LIMIT)  # |log gain| < GAIN_LIMIT
            return SimulatorOutput((x * jnp.exp(log_gain)).astype(x.dtype), None, log_gain)
        if cfg.field_barrier:
            out = gradient_barrier(out)
        field = out
        growth = out[..., 0] if cfg.output == "volume" else None
        if growth is not None:
            field = poisson_velocity(growth, ndim=cfg.ndim)
        if cfg.output in ("velocity", "volume"):
            field = integrate_velocity(field, steps=cfg.integration_steps)
        return SimulatorOutput(warp(x, field, mode=cfg.warp_mode), field, growth=growth)

    def _population_map(self, x: jax.Array, task: jax.Array, channels: int) -> jax.Array:
        """Each example's task map ``(N, *spatial, channels)`` (``population_map``)."""
        shape = (2, *x.shape[1:-1], channels)
        maps = self.param("population_map", nn.initializers.zeros, shape, jnp.float32)
        maps = task_maps(maps, self.config)
        select = (task == 0).reshape(-1, *(1,) * (x.ndim - 1))
        return jnp.where(select, maps[0], maps[1])
