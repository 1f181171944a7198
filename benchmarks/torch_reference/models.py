"""PyTorch reference models of the original code (SPEC section 5), written from the SPEC alone.

Conventions (PyTorch side):
- Tensors are channels-first: images ``(N, C, D, H, W)``; a displacement field is
  ``(N, 3, D, H, W)`` in VOXEL units, channel k moves array axis k (D, H, W order).
- The task code is a float per example (``(N,)`` tensor or one Python number). The original
  used -1 = inject disease (NC -> AD) and +1 = remove; jaxinterp's default is 0 / 1.
- State-dict names equal the original's, so trained weights load with ``load_state_dict``.

Parameter accounting (checked by the tests):
- ``Classifier3D``: 163,249 parameters (convs 448 + 13,856 + 55,360 + 27,664; BatchNorms
  32 + 64 + 128 + 32; Linear1 65,600; Linear2 65).
- ``ConvnetSkipConnection``: 1,680,066 used parameters plus the unused ``in_Linear2``
  (1,049,600), 2,729,666 in all. A CondConv 3x3x3 ``Cin -> Cout`` holds
  ``3 * Cout * Cin * 27 + Cout + 3 * (Cin + 1) + 3`` parameters.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

NUM_EXPERTS = 3
LEAKY_SLOPE = 0.1
CONDCONV_IMPLS = ("loop", "batched", "experts")

__all__ = [
    "CONDCONV_IMPLS",
    "Classifier3D",
    "CondConv3d",
    "ConvnetSkipConnection",
    "as_code",
    "count_parameters",
]


def as_code(code: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Return the task code as a ``(N,)`` tensor with ``like``'s dtype and device."""
    n = like.shape[0]
    code = torch.as_tensor(code, dtype=like.dtype, device=like.device)
    if code.ndim == 0:
        return code.expand(n)
    if code.shape != (n,):
        raise ValueError(f"code must be a scalar or have shape ({n},), got {tuple(code.shape)}")
    return code


def count_parameters(module: nn.Module, *, exclude_prefixes: tuple[str, ...] = ()) -> int:
    """Number of parameter entries in ``module``, skipping names that start with a prefix."""
    return sum(
        p.numel()
        for name, p in module.named_parameters()
        if not any(name.startswith(prefix) for prefix in exclude_prefixes)
    )


class Classifier3D(nn.Module):
    """The original 3D classifier for ``(N, 1, 64, 64, 64)`` inputs; returns ``(N,)`` logits.

    4 x [Conv3d 3x3x3 pad 1 -> BatchNorm3d -> ReLU -> MaxPool 2] with 16, 32, 64, 16 channels,
    flatten in (C, D, H, W) order (1024 values at 64^3), Dropout 0.05, Linear 1024 -> 64, ReLU,
    Linear 64 -> 1. State-dict names: ``net.{0,4,8,12}`` convs, ``net.{1,5,9,13}`` BatchNorms,
    ``Linear1``, ``Linear2``. In the original ADNI labels a positive logit meant "control".
    """

    def __init__(self, channels: tuple[int, ...] = (16, 32, 64, 16), flat_features: int = 1024):
        super().__init__()
        layers: list[nn.Module] = []
        cin = 1
        for cout in channels:
            layers += [
                nn.Conv3d(cin, cout, kernel_size=3, padding=1),
                nn.BatchNorm3d(cout, eps=1e-5, momentum=0.1),
                nn.ReLU(),
                nn.MaxPool3d(2),
            ]
            cin = cout
        self.net = nn.Sequential(*layers)
        self.dropout = nn.Dropout(0.05)
        self.Linear1 = nn.Linear(flat_features, 64)
        self.Linear2 = nn.Linear(64, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.net(x).flatten(1)
        h = F.relu(self.Linear1(self.dropout(h)))
        return self.Linear2(h).squeeze(-1)


class _RoutingFn(nn.Module):
    """Expert weights ``sigmoid(fc([Dropout0.1(GlobalAvgPool(x)), code]))``, shape (N, K)."""

    def __init__(self, in_channels: int, num_experts: int):
        super().__init__()
        self.dropout = nn.Dropout(0.1)
        self.fc = nn.Linear(in_channels + 1, num_experts)

    def forward(self, x: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        pooled = self.dropout(x.mean(dim=(2, 3, 4)))
        return torch.sigmoid(self.fc(torch.cat([pooled, code[:, None]], dim=1)))


class CondConv3d(nn.Module):
    """Conditional 3x3x3 convolution (pad 1, stride 1) with K experts and a task code.

    ``out[n] = conv(x[n], sum_k alpha[n, k] * weight[k]) + bias`` with
    ``alpha = sigmoid(fc([Dropout0.1(mean_{DHW} x), code]))``. The bias is ONE ``(Cout,)``
    vector shared by the experts and not mixed. Expert weights are Xavier-normal per expert
    (fan_in = Cin * 27, fan_out = Cout * 27), the bias is zero, ``fc`` keeps PyTorch's default.

    ``impl`` picks how the per-example kernel is applied; all give the same function:
    - ``"loop"``: a Python loop over the batch, one ``F.conv3d`` per example with its mixed
      kernel (how the original computes it).
    - ``"batched"``: one grouped convolution (``groups=N``) with the N mixed kernels.
    - ``"experts"``: one convolution with all K experts, then the alpha-weighted sum.
    The routing (including its dropout draw) is computed once for the batch in every case.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        num_experts: int = NUM_EXPERTS,
        impl: str = "loop",
    ):
        super().__init__()
        if impl not in CONDCONV_IMPLS:
            raise ValueError(f"impl must be one of {CONDCONV_IMPLS}, got {impl!r}")
        self.impl = impl
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.num_experts = num_experts
        self.weight = nn.Parameter(torch.empty(num_experts, out_channels, in_channels, 3, 3, 3))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self._routing_fn = _RoutingFn(in_channels, num_experts)
        for k in range(num_experts):
            nn.init.xavier_normal_(self.weight.data[k])

    def forward(self, x: torch.Tensor, code: float | torch.Tensor) -> torch.Tensor:
        code = as_code(code, x)
        alpha = self._routing_fn(x, code)  # (N, K)
        if self.impl == "loop":
            outs = []
            for i in range(x.shape[0]):
                kernel = torch.tensordot(alpha[i], self.weight, dims=1)
                outs.append(F.conv3d(x[i : i + 1], kernel, self.bias, padding=1))
            return torch.cat(outs, dim=0)
        n, cin, d, h, w = x.shape
        cout, k = self.out_channels, self.num_experts
        if self.impl == "batched":
            kernels = torch.einsum("nk,koidhw->noidhw", alpha, self.weight)
            out = F.conv3d(
                x.reshape(1, n * cin, d, h, w),
                kernels.reshape(n * cout, cin, 3, 3, 3),
                padding=1,
                groups=n,
            )
            out = out.reshape(n, cout, d, h, w)
        else:
            out = F.conv3d(x, self.weight.reshape(k * cout, cin, 3, 3, 3), padding=1)
            out = torch.einsum("nk,nkodhw->nodhw", alpha, out.reshape(n, k, cout, d, h, w))
        return out + self.bias[None, :, None, None, None]

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, num_experts={self.num_experts}, "
            f"impl={self.impl!r}"
        )


class _ConvBlock(nn.Module):
    """Holds one CondConv as ``.conv`` (``input``, ``up_input`` and ``output``)."""

    def __init__(self, cin: int, cout: int, impl: str):
        super().__init__()
        self.conv = CondConv3d(cin, cout, impl=impl)

    def forward(self, x: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        return self.conv(x, code)


class _DownBlock(nn.Module):
    """``feed`` = BN -> LeakyReLU(0.1) -> MaxPool 2, then ``conv`` = CondConv."""

    def __init__(self, cin: int, cout: int, impl: str):
        super().__init__()
        self.feed = nn.Sequential(
            nn.BatchNorm3d(cin, eps=1e-5, momentum=0.1),
            nn.LeakyReLU(LEAKY_SLOPE),
            nn.MaxPool3d(2),
        )
        self.conv = CondConv3d(cin, cout, impl=impl)

    def forward(self, x: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        return self.conv(self.feed(x), code)


def _bn_act_up(channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.BatchNorm3d(channels, eps=1e-5, momentum=0.1),
        nn.LeakyReLU(LEAKY_SLOPE),
        nn.Upsample(scale_factor=2, mode="nearest"),
    )


class _UpNoConv(nn.Module):
    """``act_bn_mp`` = BN -> LeakyReLU(0.1) -> nearest up-sampling x2 (no convolution)."""

    def __init__(self, channels: int):
        super().__init__()
        self.act_bn_mp = _bn_act_up(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act_bn_mp(x)


class _UpBlock(nn.Module):
    """``conv`` = CondConv, then ``feed`` = BN -> LeakyReLU(0.1) -> nearest up-sampling x2."""

    def __init__(self, cin: int, cout: int, impl: str):
        super().__init__()
        self.conv = CondConv3d(cin, cout, impl=impl)
        self.feed = _bn_act_up(cout)

    def forward(self, x: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        return self.feed(self.conv(x, code))


class ConvnetSkipConnection(nn.Module):
    """The original simulator ``Convnet_SkipConnection``: image and code -> displacement.

    Input ``(N, 1, 64, 64, 64)`` (the bottleneck fixes 64^3) and a task code (scalar or
    ``(N,)``); output the displacement field ``(N, 3, 64, 64, 64)`` in voxel units, channel k
    moves axis k (D, H, W), to be used by the pull-back ``warp``. Every conv is a 3x3x3
    ``CondConv3d`` whose implementation is chosen by ``condconv_impl``.

    d0 = CC(1->16)(x); d_i = CC(BN -> LeakyReLU -> MaxPool(d_{i-1})) for 16->32, 32->64,
    64->16, 16->16; z = out_Linear1(ReLU([in_Linear1(flatten d4), code])) as 16 x 4^3;
    u4 = CC(z) + d4; u3 = Up(LReLU(BN(u4))) + d3; u2 = Up(LReLU(BN(CC(u3)))) + d2;
    u1 = Up(LReLU(BN(CC(u2)))) + d1; u0 = Up(LReLU(BN(CC(u1)))) + d0; out = CC(16->3)(u0).
    ``in_Linear2`` exists only for state-dict compatibility and is never used.

    ``size`` other than 64 (a multiple of 16) keeps every layer and width and sizes the
    bottleneck's dense layers for ``16 (size/16)^3`` flattened values: not the original
    model, but the same computation at another volume size (for CPU benchmarks and tests).
    """

    def __init__(self, *, condconv_impl: str = "loop", size: int = 64):
        super().__init__()
        if size < 16 or size % 16:
            raise ValueError(f"size must be a positive multiple of 16, got {size}")
        self.size = size
        flat = 16 * (size // 16) ** 3
        impl = condconv_impl
        self.input = _ConvBlock(1, 16, impl)
        self.down1 = _DownBlock(16, 32, impl)
        self.down2 = _DownBlock(32, 64, impl)
        self.down3 = _DownBlock(64, 16, impl)
        self.down4 = _DownBlock(16, 16, impl)
        self.in_Linear1 = nn.Linear(flat, 512)
        self.in_Linear2 = nn.Linear(flat, flat)  # unused, kept for state-dict compatibility
        self.out_Linear1 = nn.Linear(513, flat)
        self.up_input = _ConvBlock(16, 16, impl)
        self.up1_noconv = _UpNoConv(16)
        self.up2 = _UpBlock(16, 64, impl)
        self.up3 = _UpBlock(64, 32, impl)
        self.up4 = _UpBlock(32, 16, impl)
        self.output = _ConvBlock(16, 3, impl)

    @property
    def condconv_impl(self) -> str:
        return self.input.conv.impl

    def set_condconv_impl(self, impl: str) -> ConvnetSkipConnection:
        """Switch every CondConv to ``impl`` in place (the parameters are unchanged)."""
        if impl not in CONDCONV_IMPLS:
            raise ValueError(f"impl must be one of {CONDCONV_IMPLS}, got {impl!r}")
        for module in self.modules():
            if isinstance(module, CondConv3d):
                module.impl = impl
        return self

    def forward(self, x: torch.Tensor, code: float | torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != (1, *(self.size,) * 3):
            raise ValueError(
                f"expected input (N, 1, {self.size}, {self.size}, {self.size}), "
                f"got {tuple(x.shape)}"
            )
        code = as_code(code, x)
        d0 = self.input(x, code)
        d1 = self.down1(d0, code)
        d2 = self.down2(d1, code)
        d3 = self.down3(d2, code)
        d4 = self.down4(d3, code)
        h = self.in_Linear1(d4.flatten(1))
        h = F.relu(torch.cat([h, code[:, None]], dim=1))
        z = self.out_Linear1(h).reshape(d4.shape)
        u4 = self.up_input(z, code) + d4
        u3 = self.up1_noconv(u4) + d3
        u2 = self.up2(u3, code) + d2
        u1 = self.up3(u2, code) + d1
        u0 = self.up4(u1, code) + d0
        return self.output(u0, code)
