"""Import the authors' PyTorch weights into jaxinterp's ``original()`` models.

The state-dict names are those of the original code (SPEC section 5, reproduced by
``benchmarks/torch_reference``): ``Convnet_SkipConnection`` for the simulator and the 3D
classifier. Layout changes, PyTorch -> Flax:

* CondConv expert weights ``(K, Cout, Cin, kd, kh, kw)`` -> ``(K, kd, kh, kw, Cin, Cout)``;
  the routing layer ``_routing_fn.fc`` ``(K, Cin + 1)`` -> Dense kernel ``(Cin + 1, K)``.
* Conv3d ``(Cout, Cin, kd, kh, kw)`` -> ``(kd, kh, kw, Cin, Cout)``: permutation
  ``(2, 3, 4, 1, 0)``.
* Linear ``(out, in)`` -> Dense kernel ``(in, out)``. Both models flatten in PyTorch's
  ``(C, D, H, W)`` order, so the transpose is all the dense layers need.
* BatchNorm ``weight``/``bias`` -> ``scale``/``bias``; ``running_mean``/``running_var`` ->
  the ``batch_stats`` collection's ``mean``/``var`` (eps 1e-5 on both sides).

The original feeds task codes -1 (inject) and +1 (remove) to the network: use the imported
simulator with ``SimulatorConfig.original()`` (``task_codes=(-1, 1)``) and call it with
jaxinterp's API codes 0 (inject) and 1 (remove). Channels-last inputs, ``(N, D, H, W, 1)``;
the field's component ``k`` moves axis ``k`` on both sides.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxinterp.nn.classifier import Classifier, ClassifierConfig
from jaxinterp.nn.simulator import Simulator, SimulatorConfig

__all__ = [
    "classifier_variables_from_torch",
    "load_torch_state_dict",
    "simulator_variables_from_torch",
]

# Keys under which checkpoints commonly wrap the state dict, tried in this order.
CHECKPOINT_KEYS = ("state_dict", "model_state_dict", "model", "net", "module")
# State-dict entries the JAX models do not need: the original's never-used layer, and
# BatchNorm's step counters.
IGNORED = ("in_Linear2.", "num_batches_tracked")

# One transform = (torch suffix, flax collection, flax sub-path, permutation of the
# PyTorch array's axes or None). Permutations are their own description of the layout.
Transform = tuple[str, str, tuple[str, ...], tuple[int, ...] | None]
_LAYERS: dict[str, tuple[Transform, ...]] = {
    "condconv": (
        ("weight", "params", ("kernel",), (0, 3, 4, 5, 2, 1)),
        ("bias", "params", ("bias",), None),
        ("_routing_fn.fc.weight", "params", ("routing", "kernel"), (1, 0)),
        ("_routing_fn.fc.bias", "params", ("routing", "bias"), None),
    ),
    "conv3d": (
        ("weight", "params", ("kernel",), (2, 3, 4, 1, 0)),
        ("bias", "params", ("bias",), None),
    ),
    "batchnorm": (
        ("weight", "params", ("scale",), None),
        ("bias", "params", ("bias",), None),
        ("running_mean", "batch_stats", ("mean",), None),
        ("running_var", "batch_stats", ("var",), None),
    ),
    "linear": (
        ("weight", "params", ("kernel",), (1, 0)),
        ("bias", "params", ("bias",), None),
    ),
}


def _simulator_layers() -> dict[str, tuple[str, str]]:
    """PyTorch module name -> (flax module name under ``net``, layer kind)."""
    layers = {"input.conv": ("enc0", "condconv")}
    for i in range(1, 5):
        layers[f"down{i}.feed.0"] = (f"enc{i}_bn", "batchnorm")
        layers[f"down{i}.conv"] = (f"enc{i}", "condconv")
    layers["in_Linear1"] = ("bottleneck_in", "linear")
    layers["out_Linear1"] = ("bottleneck_out", "linear")
    layers["up_input.conv"] = ("dec4", "condconv")
    layers["up1_noconv.act_bn_mp.0"] = ("dec3_bn", "batchnorm")
    for up, level in zip((2, 3, 4), (2, 1, 0), strict=True):
        layers[f"up{up}.conv"] = (f"dec{level}", "condconv")
        layers[f"up{up}.feed.0"] = (f"dec{level}_bn", "batchnorm")
    layers["output.conv"] = ("output", "condconv")
    return layers


def _classifier_layers() -> dict[str, tuple[str, str]]:
    layers = {}
    for i, (conv, bn) in enumerate(zip((0, 4, 8, 12), (1, 5, 9, 13), strict=True)):
        layers[f"net.{conv}"] = (f"conv{i}", "conv3d")
        layers[f"net.{bn}"] = (f"bn{i}", "batchnorm")
    layers["Linear1"] = ("hidden", "linear")
    layers["Linear2"] = ("logit", "linear")
    return layers


def _entries(
    layers: Mapping[str, tuple[str, str]], root: tuple[str, ...]
) -> Iterator[tuple[str, str, tuple[str, ...], tuple[int, ...] | None]]:
    """(torch name, collection, flax path, permutation) for every tensor of ``layers``."""
    for torch_module, (flax_module, kind) in layers.items():
        for suffix, collection, sub_path, perm in _LAYERS[kind]:
            yield f"{torch_module}.{suffix}", collection, (*root, flax_module, *sub_path), perm


def _to_numpy(value: Any) -> np.ndarray:
    """A COPY of a PyTorch tensor (any device, any float dtype) or array-like as NumPy.

    A copy, because on the CPU ``Tensor.numpy()`` and ``jnp.asarray`` may both share memory:
    an optimizer step on the PyTorch model would then change the JAX arrays in place.
    """
    if hasattr(value, "detach"):  # a torch.Tensor, without importing torch
        value = value.detach().cpu()
        if value.is_floating_point():
            value = value.float()  # NumPy has no bfloat16
        value = value.numpy()
    return np.array(value, copy=True)


def _names(names: list[str], limit: int = 8) -> str:
    names = sorted(names)
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return f"{names[:limit]}{more}"


def _strip_prefix(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Drop the ``module.`` prefix ``nn.DataParallel`` puts on every name."""
    if state_dict and all(k.startswith("module.") for k in state_dict):
        return {k[len("module.") :]: v for k, v in state_dict.items()}
    return dict(state_dict)


def _convert(
    state_dict: Mapping[str, Any],
    layers: Mapping[str, tuple[str, str]],
    root: tuple[str, ...],
    expected: Mapping[str, Any],
    what: str,
) -> dict[str, Any]:
    """Map ``state_dict`` onto a variables tree shaped like ``expected`` (from eval_shape)."""
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"{what}: expected a state dict (name -> tensor), got {type(state_dict)}")
    state_dict = _strip_prefix(state_dict)
    entries = list(_entries(layers, root))
    known = {name for name, *_ in entries}
    missing = [name for name in known if name not in state_dict]
    if missing:
        raise ValueError(f"{what}: state dict lacks tensor(s) {_names(missing)}")
    unexpected = [
        name for name in state_dict if name not in known and not any(s in name for s in IGNORED)
    ]
    if unexpected:
        raise ValueError(
            f"{what}: unexpected tensor(s) {_names(unexpected)}; is this the right model's "
            "state dict?"
        )

    variables: dict[str, Any] = {}
    for name, collection, path, perm in entries:
        target = expected[collection]
        for key in path:
            target = target[key]
        want = tuple(target.shape)
        want_torch = want if perm is None else tuple(want[perm.index(i)] for i in range(len(perm)))
        value = _to_numpy(state_dict[name])
        if value.shape != want_torch:
            raise ValueError(
                f"{what}: tensor {name!r} has shape {tuple(value.shape)}, expected "
                f"{want_torch} (for {'/'.join((collection, *path))} of shape {want})"
            )
        if perm is not None:
            value = np.transpose(value, perm)
        node = variables.setdefault(collection, {})
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = jnp.asarray(value, dtype=target.dtype)

    if jax.tree.structure(variables) != jax.tree.structure(dict(expected)):  # table is complete
        raise AssertionError(f"{what}: the name table does not cover the model's variables")
    return variables


def simulator_variables_from_torch(
    state_dict: Mapping[str, Any], *, spatial_shape: tuple[int, int, int] = (64, 64, 64)
) -> dict[str, Any]:
    """The original simulator's weights as ``Simulator(SimulatorConfig.original())`` variables.

    Args:
      state_dict: ``Convnet_SkipConnection``'s state dict (tensors or arrays; names as in
        SPEC section 5, optionally prefixed ``module.``). ``in_Linear2`` (never used by the
        original) and ``num_batches_tracked`` are ignored.
      spatial_shape: the input size the weights belong to; it fixes the bottleneck's
        flattened width (the original: 64^3, 1024 values).

    Returns:
      ``{"params": ..., "batch_stats": ...}`` for ``Simulator.apply``; every conv is a
      CondConv under ``params["net"]``.

    Raises:
      ValueError: a tensor is missing, unexpected, or has the wrong shape (the message names
        it and gives the expected and actual shapes).
    """
    model = Simulator(SimulatorConfig.original())
    x = jax.ShapeDtypeStruct((1, *spatial_shape, 1), jnp.float32)
    task = jax.ShapeDtypeStruct((1,), jnp.int32)
    expected = jax.eval_shape(model.init, jax.random.key(0), x, task)
    return _convert(state_dict, _simulator_layers(), ("net",), expected, "simulator")


def classifier_variables_from_torch(
    state_dict: Mapping[str, Any], *, spatial_shape: tuple[int, int, int] = (64, 64, 64)
) -> dict[str, Any]:
    """The original 3D classifier's weights as ``Classifier(ClassifierConfig.original())``
    variables ``{"params": ..., "batch_stats": ...}``.

    ``state_dict`` has the names ``net.{0,4,8,12}`` (convs), ``net.{1,5,9,13}``
    (BatchNorms), ``Linear1``, ``Linear2``; ``spatial_shape`` fixes ``Linear1``'s input width
    (64^3: 1024). Raises ``ValueError`` naming any missing, unexpected or mis-shaped tensor.
    Note the original ADNI labels: there a positive logit meant "control" (negate the logit,
    or the ``logit`` layer's kernel and bias, to get jaxinterp's "positive = diseased").
    """
    model = Classifier(ClassifierConfig.original())
    x = jax.ShapeDtypeStruct((1, *spatial_shape, 1), jnp.float32)
    expected = jax.eval_shape(model.init, jax.random.key(0), x)
    return _convert(state_dict, _classifier_layers(), (), expected, "classifier")


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and hasattr(v, "shape") for k, v in obj.items())
    )


def load_torch_state_dict(path: str | os.PathLike) -> dict[str, Any]:
    """Read a PyTorch state dict (name -> tensor) from a ``torch.save`` file, on the CPU.

    Uses ``torch.load(path, map_location="cpu", weights_only=True)``: no arbitrary code runs.
    A checkpoint dict that wraps the state dict under one of ``CHECKPOINT_KEYS`` (e.g.
    ``{"epoch": 3, "state_dict": {...}}``) is unwrapped. Needs PyTorch (the ``torch`` extra:
    ``pip install "jaxinterp[torch]"``).

    Raises:
      ImportError: PyTorch is not installed.
      FileNotFoundError: no file at ``path``.
      ValueError: the file is not a PyTorch checkpoint, or holds no state dict.
    """
    try:
        import torch
    except ImportError as err:
        raise ImportError(
            'load_torch_state_dict needs PyTorch: pip install "jaxinterp[torch]"'
        ) from err
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint file at {path!r}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip and weights_only errors alike
        raise ValueError(f"{path!r} could not be read as a PyTorch checkpoint: {err}") from err
    if not _is_state_dict(obj) and isinstance(obj, Mapping):
        obj = next((obj[k] for k in CHECKPOINT_KEYS if _is_state_dict(obj.get(k))), obj)
    if not _is_state_dict(obj):
        got = type(obj).__name__
        if isinstance(obj, Mapping):
            got += f" with keys {sorted(map(str, obj))[:10]}"
        raise ValueError(
            f"{path!r} holds no state dict (a mapping of names to tensors), got {got}; a "
            f"wrapped state dict must sit under one of {CHECKPOINT_KEYS}"
        )
    return dict(obj)
