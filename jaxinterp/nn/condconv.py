"""Conditional convolution (CondConv) with task-and-pool routing, 2D and 3D, channels-last.

``f' = sum_k alpha_k (W_k * f) + b`` with ``alpha = sigmoid(Dense([GlobalAvgPool(f), t]))``
(paper eq. 3-4, K experts). Convolution is linear in its kernel, so mixing the K kernels
per example (``implementation="per_example"``) and mixing the K experts' outputs
(``implementation="experts"``) compute the same function; they differ only in speed.
Neither loops over the batch in Python. ``"auto"`` (the default) takes the faster on the
backend that runs it: experts on CPUs (XLA's CPU grouped 3D convolution is slow: 10.3 s
against 3.3 s per paper training step at 32^3, batch 4, 2 cores), per-example elsewhere
(one H200, 64^3, batch 8: 41.5 ms against 61.6 ms per step; benchmarks/RESULTS.md
section 2).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

# Xavier (Glorot) normal per expert: fans from (*kernel, Cin, Cout), the expert axis is a batch.
expert_kernel_init = nn.initializers.variance_scaling(
    1.0, "fan_avg", "normal", in_axis=-2, out_axis=-1, batch_axis=(0,)
)


def conv_nd(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """'SAME' stride-1 convolution of channels-last ``x (N, *spatial, Cin)`` with a kernel
    ``(*window, Cin, Cout)``, 2D or 3D (cross-correlation, as every deep-learning library)."""
    ndim = x.ndim - 2
    spatial = "DHW"[-ndim:]
    dims = jax.lax.conv_dimension_numbers(
        x.shape, kernel.shape, (f"N{spatial}C", f"{spatial}IO", f"N{spatial}C")
    )
    return jax.lax.conv_general_dilated(x, kernel, (1,) * ndim, "SAME", dimension_numbers=dims)


def resolve_implementation(implementation: str) -> str:
    """``"auto"`` -> ``"experts"`` on the CPU backend, ``"per_example"`` on any other (GPU,
    TPU); the two others unchanged."""
    if implementation == "auto":
        return "experts" if jax.default_backend() == "cpu" else "per_example"
    return implementation


class CondConv(nn.Module):
    """Conditional convolution, 2D or 3D by the rank of its input.

    Parameters: ``kernel`` ``(K, *window, Cin, Cout)`` (K expert kernels, Xavier-normal),
    ``bias`` ``(Cout,)`` shared by the experts (the original code) or ``(K, Cout)`` mixed
    like the kernels, and the routing layer ``routing`` (Dense ``Cin + 1 -> K``).
    """

    features: int  # output channels
    kernel_size: int | Sequence[int] = 3  # odd window per spatial axis
    num_experts: int = 3  # K
    routing_dropout: float = 0.1  # dropout on the pooled features before routing (training only)
    bias: Literal["shared", "mixed", "none"] = "shared"
    implementation: Literal["auto", "experts", "per_example"] = "auto"
    dtype: Any = None  # compute dtype of the convolution (e.g. jnp.bfloat16); None = input's
    param_dtype: Any = jnp.float32
    kernel_init: Any = expert_kernel_init  # initializer of the (K, *window, C_in, C_out) kernels

    @nn.compact
    def __call__(self, x: jax.Array, task: jax.Array, *, deterministic: bool = True) -> jax.Array:
        """Args:
          x: ``(N, *spatial, Cin)``, channels-last, 2 or 3 spatial axes.
          task: ``(N,)`` or scalar task code (0 inject, 1 remove), given to the routing.
          deterministic: disables routing dropout (inference).

        Returns:
          ``(N, *spatial, features)``.
        """
        if x.ndim not in (4, 5):
            raise ValueError(
                f"CondConv expects (N, *spatial, C) with 2 or 3 spatial axes, got {x.shape}"
            )
        ndim = x.ndim - 2
        window = (
            (self.kernel_size,) * ndim
            if isinstance(self.kernel_size, int)
            else tuple(self.kernel_size)
        )
        n, cin = x.shape[0], x.shape[-1]
        kernel = self.param(
            "kernel",
            self.kernel_init,
            (self.num_experts, *window, cin, self.features),
            self.param_dtype,
        )
        alpha = self.routing_weights(x, task, deterministic=deterministic)  # (N, K)

        dtype = self.dtype or x.dtype
        xc = x.astype(dtype)
        implementation = resolve_implementation(self.implementation)
        if implementation == "experts":
            stacked = jnp.moveaxis(kernel, 0, -2).reshape(*window, cin, -1)  # (*w, Cin, K*Cout)
            y = conv_nd(xc, stacked.astype(dtype))
            y = y.reshape(*y.shape[:-1], self.num_experts, self.features)
            y = jnp.einsum("n...kc,nk->n...c", y, alpha.astype(dtype))
        elif implementation == "per_example":
            kernels = jnp.einsum("nk,k...->n...", alpha, kernel).astype(dtype)
            y = jax.vmap(lambda xi, wi: conv_nd(xi[None], wi)[0])(xc, kernels)
        else:
            raise ValueError(f"unknown CondConv implementation {self.implementation!r}")

        if self.bias == "shared":
            b = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
            y = y + b.astype(y.dtype).reshape((1,) * (y.ndim - 1) + (-1,))
        elif self.bias == "mixed":
            b = self.param(
                "bias", nn.initializers.zeros, (self.num_experts, self.features), self.param_dtype
            )
            mixed = (alpha @ b).astype(y.dtype)  # (N, Cout)
            y = y + mixed.reshape(n, *(1,) * ndim, self.features)
        elif self.bias != "none":
            raise ValueError(f"unknown CondConv bias mode {self.bias!r}")
        return y

    def routing_weights(
        self, x: jax.Array, task: jax.Array, *, deterministic: bool = True
    ) -> jax.Array:
        """``alpha = sigmoid(Dense([GlobalAvgPool(x), t]))``, shape ``(N, K)``, float32."""
        n = x.shape[0]
        pooled = jnp.mean(x.astype(jnp.float32), axis=tuple(range(1, x.ndim - 1)))
        pooled = nn.Dropout(self.routing_dropout)(pooled, deterministic=deterministic)
        code = jnp.broadcast_to(jnp.asarray(task, jnp.float32), (n,))[:, None]
        logits = nn.Dense(self.num_experts, name="routing", param_dtype=self.param_dtype)(
            jnp.concatenate([pooled, code], axis=-1)
        )
        return jax.nn.sigmoid(logits)
