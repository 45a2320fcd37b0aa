"""Uniform quantization of K/V vectors at any width 1..8 bits, with optional fp16 outliers.

Unit of quantization: one *group* = ``group_size`` consecutive values along head_dim of one
token of one KV head (``group_size=None``: the whole head_dim). Every group has its own
fp16 scale (and zero point); the width is per token per head (a tensor of widths gives the
adaptive, per-token widths that QAQ allocates), repeated over the token's groups.

Schemes (``scheme``):

- ``"minmax"`` (asymmetric): ``scale = (max - min) / (2^b - 1)``, ``zero = min``,
  ``code = round((x - zero) / scale)`` in ``[0, 2^b - 1]``; ``x_hat = code * scale + zero``.
- ``"symmetric"``: ``scale = amax / (2^(b-1) - 1)`` (b >= 2), ``code = round(x / scale) + 2^(b-1)``;
  no zero point is stored. At b=4 this is the grid of ``ecc_kv.quant`` (q in [-8, 7]).
- ``"mean"``: the QAQ reference code's grid: zero point at the group mean,
  ``scale = (max - min) / 2^b``, ``q = round((x - mean) / scale)`` clamped to
  ``[-2^(b-1), 2^(b-1) - 1]``. Torch only for the statistics (the mean's summation order
  is not reproducible across backends); packing still runs on either backend.

All schemes dequantize as ``x_hat = (code - c0) * scale + zero`` with ``c0`` 0 or ``2^(b-1)``;
``(code - c0) * scale`` is exact in fp32 (<= 9 + 11 significant bits), so torch and a fused
multiply-add on the GPU give the same bits. Scales are rounded *up* to fp16 (so codes never
clip at the top); ``v = (x - zero) * (1 / scale)`` with one correctly rounded reciprocal per
group, rounded as ``floor(v + 0.5)``, every step a separately rounded fp32 operation on both
backends (the kernel is compiled without FMA contraction), which is what makes
``kernels.bitpack`` reproduce the codes bit for bit.

Outliers (``outliers=f``): in each group the ``k = ceil(f * group_size / 2)`` largest and the
``k`` smallest values (half per tail; ties: lowest index first, largest tail first) are kept
exactly in fp16 with their positions, excluded from the scale statistics and written back
after dequantization. With head_dim 64 and f=0.01 that is one value per tail (2/64 = 3.1%
of the values): the real fraction is what ``outlier_fraction`` reports and what the byte
accounting in ``ecc_kv.bitpack`` counts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ecc_kv.quant import check_backend, check_float_tensor, resolve_group_size

SCHEMES = ("minmax", "symmetric", "mean")
_FP16_MAX = 65504.0


@dataclass
class QuantizedGroups:
    """Codes and metadata of a quantized tensor, flattened to groups.

    codes: uint8 [M, G] (M = number of groups = prod(shape[:-1]) * D // G), the low ``bits`` bits used.
    bits: uint8 [M] width of each group (the token's width repeated over its groups).
    scale: fp16 [M]; zero: fp16 [M] (zeros for ``symmetric``, not stored by the packer).
    out_val: fp16 [M, 2k] outlier values; out_pos: int16 [M, 2k] their positions in the group.
    """

    codes: torch.Tensor
    bits: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor
    out_val: torch.Tensor
    out_pos: torch.Tensor
    shape: tuple[int, ...]
    group_size: int
    scheme: str

    @property
    def n_groups(self) -> int:
        return self.codes.shape[0]

    @property
    def k_tail(self) -> int:
        return self.out_val.shape[1] // 2

    @property
    def outlier_fraction(self) -> float:
        """Fraction of values kept as fp16 outliers."""
        return self.out_val.shape[1] / self.group_size


def outliers_per_tail(outliers: float, group_size: int) -> int:
    """Outliers kept per tail of a group: ``ceil(outliers * group_size / 2)`` (0 when ``outliers`` is 0)."""
    if isinstance(outliers, bool) or not isinstance(outliers, (int, float)):
        raise TypeError(f"outliers must be a float in [0, 0.5), got {outliers!r}")
    if not 0.0 <= outliers < 0.5:
        raise ValueError(f"outliers={outliers} must be in [0, 0.5)")
    k = math.ceil(outliers * group_size / 2 - 1e-9) if outliers > 0 else 0
    if 2 * k >= group_size:
        raise ValueError(f"outliers={outliers} leaves no inliers in groups of {group_size} values")
    return k


def check_scheme(scheme: str) -> str:
    if scheme not in SCHEMES:
        raise ValueError(f"scheme={scheme!r} is not one of {SCHEMES}")
    return scheme


def group_bits(
    bits: int | torch.Tensor, lead_shape: tuple[int, ...], n_per_row: int, device: torch.device, check: bool = True
) -> torch.Tensor:
    """Widths per group, uint8 [prod(lead_shape) * n_per_row], from an int or a [*lead_shape] tensor.

    ``check=False`` skips the range check of a tensor (no device-to-host sync; for stored widths).
    """
    if isinstance(bits, torch.Tensor):
        if tuple(bits.shape) != tuple(lead_shape):
            raise ValueError(f"bits.shape={tuple(bits.shape)} must be x.shape[:-1]={tuple(lead_shape)}")
        if check and bits.numel() and bool(((bits < 1) | (bits > 8)).any()):
            raise ValueError(f"bits must lie in 1..8, got range [{int(bits.min())}, {int(bits.max())}]")
        if bits.dtype == torch.uint8 and n_per_row == 1:
            return bits.to(device).reshape(-1)
        return bits.to(device=device, dtype=torch.uint8).reshape(-1, 1).expand(-1, n_per_row).reshape(-1)
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 8:
        raise ValueError(f"bits={bits!r} must be an int in 1..8 (or a tensor of them)")
    n = math.prod(lead_shape) * n_per_row
    return torch.full((n,), bits, dtype=torch.uint8, device=device)


def round_up_fp16(s32: torch.Tensor) -> torch.Tensor:
    """fp16 of a non-negative fp32 tensor, rounded up when round-to-nearest went down."""
    s32 = s32.clamp(max=_FP16_MAX)
    s16 = s32.to(torch.float16)
    down = s16.to(torch.float32) < s32
    return torch.where(down, (s16.view(torch.int16) + 1).view(torch.float16), s16)


def select_outliers(xg: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions [M, 2k] (int64) of the k largest then k smallest values of each row; mask [M, G] of them.

    Iterative argmax/argmin (first index on ties), the same order as the Triton kernel.
    xg: fp32 [M, G].
    """
    m, g = xg.shape
    taken = torch.zeros(m, g, dtype=torch.bool, device=xg.device)
    pos = []
    for tail in (0, 1):
        for _ in range(k):
            if tail == 0:
                idx = torch.where(taken, float("-inf"), xg).argmax(dim=1)
            else:
                idx = torch.where(taken, float("inf"), xg).argmin(dim=1)
            taken[torch.arange(m, device=xg.device), idx] = True
            pos.append(idx)
    if not pos:
        return torch.zeros(m, 0, dtype=torch.int64, device=xg.device), taken
    return torch.stack(pos, dim=1), taken


def quantize_groups_torch(
    xg: torch.Tensor, bits: torch.Tensor, scheme: str, k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The torch reference on groups: xg [M, G] (any float), bits uint8 [M].

    Returns codes uint8 [M, G], scale fp16 [M], zero fp16 [M], out_val fp16 [M, 2k], out_pos int16 [M, 2k].
    """
    x = xg.to(torch.float32)
    pos, taken = select_outliers(x, k)
    out_val = torch.gather(xg, 1, pos).to(torch.float16)
    b = bits.to(torch.int32)
    levels = (1 << b).to(torch.float32)  # [M] 2^b
    mx = torch.where(taken, float("-inf"), x).amax(dim=1)
    mn = torch.where(taken, float("inf"), x).amin(dim=1)
    if scheme == "minmax":
        scale = round_up_fp16((mx - mn) / (levels - 1.0))
        zero = mn.to(torch.float16)
        c0 = torch.zeros_like(levels)
    elif scheme == "symmetric":
        if int(b.min()) < 2:
            raise ValueError("scheme='symmetric' needs bits >= 2 (1 bit has no symmetric grid)")
        amax = torch.maximum(mx.abs(), mn.abs())
        scale = round_up_fp16(amax / (levels / 2 - 1.0))
        zero = torch.zeros_like(scale)
        c0 = levels / 2
    else:  # mean: the QAQ reference code's grid
        keep = (~taken).to(torch.float32)
        mean = (x * keep).sum(dim=1) / keep.sum(dim=1)
        scale = round_up_fp16((mx - mn) / levels)
        zero = mean.to(torch.float16)
        c0 = levels / 2
    s = scale.to(torch.float32)
    safe = torch.where(s > 0, s, torch.ones_like(s))
    inv = 1.0 / safe  # one correctly rounded division per group, then multiplies (as the kernel does)
    v = torch.floor((x - zero.to(torch.float32)[:, None]) * inv[:, None] + 0.5) + c0[:, None]
    codes = torch.minimum(torch.clamp(v, min=0.0), (levels - 1.0)[:, None])
    codes = torch.where(s[:, None] > 0, codes, torch.where(c0[:, None] > 0, c0[:, None], 0.0))
    return codes.to(torch.uint8), scale, zero, out_val, pos.to(torch.int16)


def dequantize_groups_torch(q: QuantizedGroups, dtype: torch.dtype) -> torch.Tensor:
    """x_hat [M, G] = (code - c0) * scale + zero, outliers written back."""
    b = q.bits.to(torch.int32)
    c0 = torch.zeros_like(b) if q.scheme == "minmax" else (1 << b) // 2
    v = (q.codes.to(torch.int32) - c0[:, None]).to(torch.float32)
    x = v * q.scale.to(torch.float32)[:, None] + q.zero.to(torch.float32)[:, None]
    if q.out_val.shape[1]:
        x.scatter_(1, q.out_pos.to(torch.int64), q.out_val.to(torch.float32))
    return x.to(dtype)


def quantize(
    x: torch.Tensor,
    bits: int | torch.Tensor,
    group_size: int | None = None,
    scheme: str = "minmax",
    outliers: float = 0.0,
    backend: str = "torch",
) -> QuantizedGroups:
    """Quantize ``x [..., D]`` per token per head (per group along D) at ``bits`` (int or tensor [...])."""
    check_backend(backend)
    check_scheme(scheme)
    check_float_tensor(x)
    d = x.shape[-1]
    g = resolve_group_size(d, group_size)
    if g > 32767:
        raise ValueError(f"group_size={g} exceeds 32767 (positions are int16)")
    k = outliers_per_tail(outliers, g)
    lead = tuple(x.shape[:-1])
    gb = group_bits(bits, lead, d // g, x.device)
    xg = x.reshape(-1, g)  # [M, G]
    if backend == "triton" and scheme != "mean":
        from kernels.bitpack import quantize_groups_triton

        codes, scale, zero, out_val, out_pos = quantize_groups_triton(xg, gb, scheme == "symmetric", k)
    else:
        codes, scale, zero, out_val, out_pos = quantize_groups_torch(xg, gb, scheme, k)
    return QuantizedGroups(codes, gb, scale, zero, out_val, out_pos, tuple(x.shape), g, scheme)


def dequantize(q: QuantizedGroups, dtype: torch.dtype = torch.float16) -> torch.Tensor:
    """The tensor of ``q.shape`` that ``q`` stands for."""
    return dequantize_groups_torch(q, dtype).reshape(q.shape)


def fake_quantize(
    x: torch.Tensor,
    bits: int | torch.Tensor,
    group_size: int | None = None,
    scheme: str = "minmax",
    outliers: float = 0.0,
) -> torch.Tensor:
    """quantize then dequantize, in x's dtype (the simulation path; ``ecc_kv.bitpack`` stores real bytes)."""
    return dequantize(quantize(x, bits, group_size, scheme, outliers), x.dtype)
