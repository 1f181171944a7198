"""The classifier P whose decisions jaxinterp explains (paper sections 4.1-4.2, SPEC 5).

``n`` stacks of [conv 3x3(x3) -> (BatchNorm) -> activation -> max-pool 2], then the last
features are flattened in PyTorch's ``(C, *spatial)`` order (so weights trained in PyTorch
apply unchanged), dropout, a hidden dense layer with the activation, and one logit
(positive = diseased).

Saliency methods reach inside through two methods: ``features`` returns the last conv
stack's activations before its pooling (Grad-CAM's layer) and ``head`` maps them to the
logit; ``activation`` can be swapped (guided backprop's guided ReLU) without touching the
variables.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class ClassifierConfig:
    """Architecture of ``Classifier``."""

    ndim: int = 3  # spatial dimensions of the input (2 or 3)
    features: tuple[int, ...] = (16, 32, 64, 16)  # channels of the conv stacks
    hidden: int = 64  # width of the hidden dense layer
    batch_norm: bool = True  # BatchNorm after each conv (eps 1e-5, PyTorch momentum 0.1)
    dropout: float = 0.05  # dropout on the flattened features (training only)

    @classmethod
    def paper_2d(cls) -> ClassifierConfig:
        """Synthetic 2D experiment: convs with 2, 4, 8 features, hidden 16, no BatchNorm."""
        return cls(ndim=2, features=(2, 4, 8), hidden=16, batch_norm=False, dropout=0.0)

    @classmethod
    def original(cls) -> ClassifierConfig:
        """The authors' 3D classifier, layer for layer (163,249 parameters at 64^3)."""
        return cls(ndim=3, features=(16, 32, 64, 16), hidden=64, batch_norm=True, dropout=0.05)

    paper_3d = original  # the paper's 3D classifier is the original code's


class Classifier(nn.Module):
    """Binary classifier on channels-last volumes; returns one logit per example, ``(N,)``."""

    config: ClassifierConfig
    activation: Callable[[jax.Array], jax.Array] = nn.relu  # swap for guided backprop
    dtype: Any = None  # compute dtype; None = float32

    def setup(self):
        cfg = self.config
        window = (3,) * cfg.ndim
        self.convs = [
            nn.Conv(f, window, padding="SAME", dtype=self.dtype, name=f"conv{i}")
            for i, f in enumerate(cfg.features)
        ]
        if cfg.batch_norm:
            self.norms = [
                nn.BatchNorm(momentum=0.9, epsilon=1e-5, dtype=self.dtype, name=f"bn{i}")
                for i in range(len(cfg.features))
            ]
        self.drop = nn.Dropout(cfg.dropout)
        self.hidden = nn.Dense(cfg.hidden, dtype=self.dtype, name="hidden")
        self.out = nn.Dense(1, dtype=self.dtype, name="logit")

    def _check(self, x: jax.Array) -> None:
        if x.ndim != self.config.ndim + 2:
            raise ValueError(
                f"Classifier({self.config.ndim}D) expects (N, *spatial, C) with "
                f"{self.config.ndim} spatial axes, got shape {x.shape}"
            )

    def _stack(self, i: int, x: jax.Array, train: bool) -> jax.Array:
        x = self.convs[i](x)
        if self.config.batch_norm:
            x = self.norms[i](x, use_running_average=not train)
        return self.activation(x)

    def _pool(self, x: jax.Array) -> jax.Array:
        window = (2,) * self.config.ndim
        return nn.max_pool(x, window, strides=window)

    def features(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """Activations of the last conv stack before its max-pool, ``(N, *spatial', C_last)``."""
        self._check(x)
        for i in range(len(self.config.features)):
            if i > 0:
                x = self._pool(x)
            x = self._stack(i, x, train)
        return x

    def head(self, features: jax.Array, *, train: bool = False) -> jax.Array:
        """Logits ``(N,)`` from the output of ``features``."""
        x = self._pool(features)
        x = jnp.moveaxis(x, -1, 1).reshape(x.shape[0], -1)  # PyTorch (C, *spatial) order
        x = self.drop(x, deterministic=not train)
        x = self.activation(self.hidden(x))
        return self.out(x)[:, 0].astype(jnp.float32)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """Logits ``(N,)`` of channels-last images ``(N, *spatial, C)``; positive = diseased."""
        return self.head(self.features(x, train=train), train=train)
