"""Symmetric INT4 quantization of K/V vectors, per token per head (optionally per group along D).

Layout (what is stored, and where):

- ``codes``: uint8 tensor with the same shape as ``x``, one INT4 value per element in the low
  nibble, ``code = q + 8`` with ``q`` in [-8, 7]. Quantization only produces q in [-7, 7]
  (symmetric grid); -8 (code 0) is a valid stored value that bit errors can produce, and it
  dequantizes to ``-8 * scale``.
- ``scales``: fp16 tensor ``[..., D // group_size]``, one scale per token, head and group; they are
  stored next to the codes, in plain fp16, outside the ECC codewords. The fault models in
  ``ecc_kv.faults`` do not touch them unless the caller asks: ``kv_protect.roundtrip(...,
  scale_faults=True)`` sends their 16 bits through the same channel (docs/error_model.md).

Error bound: for every element, ``|x - dequantize(quantize(x))| <= scale / 2`` (before the final
cast to the output dtype), where ``scale`` is the stored fp16 scale. The fp16 rounding of the
scale cannot break it: the scale is rounded *up* to the next fp16 value whenever round-to-nearest
went down, so ``|x| / scale <= 7`` and the clamp to [-8, 7] never bites. Zero groups get scale 0
and code 8 (they dequantize to exact zeros). Inputs whose ``amax / 7`` exceeds the largest fp16
(65504) get the largest fp16 scale and are clamped (only possible for fp32 inputs above ~4.6e5).

The Triton twin (``kernels.quant``) reproduces codes and scales bit for bit: the same fp32
operations, correctly rounded division and round-half-to-even.
"""

from __future__ import annotations

import torch

QMIN = -8
QMAX = 7
ZERO_CODE = 8  # code of q = 0
_FP16_MAX = 65504.0
BACKENDS = ("torch", "triton")


def resolve_group_size(d: int, group_size: int | None) -> int:
    """The group size along D (``None``: the whole head dim); ValueError unless it divides D."""
    if group_size is None:
        return d
    if isinstance(group_size, bool) or not isinstance(group_size, int):
        raise TypeError(f"group_size must be an int or None, got {group_size!r}")
    if group_size <= 0 or d % group_size != 0:
        raise ValueError(f"group_size={group_size} must be a positive divisor of the last dim D={d}")
    return group_size


def check_backend(backend: str) -> str:
    """Validate a ``backend`` argument (shared by every ecc_kv module with two implementations)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not one of {BACKENDS}")
    return backend


def fp16_scale_from_amax(amax: torch.Tensor) -> torch.Tensor:
    """fp16 scale = amax / 7, rounded up to the next fp16 value when rounding to nearest went down.

    amax: fp32 tensor of group maxima of |x|. Returns fp16 of the same shape.
    """
    # tensor / tensor: correctly rounded on CPU and CUDA (CUDA turns "/ python scalar" into "* (1 / scalar)")
    s32 = (amax / torch.full_like(amax, 7.0)).clamp(max=_FP16_MAX)
    s16 = s32.to(torch.float16)
    down = s16.to(torch.float32) < s32
    bumped = (s16.view(torch.int16) + 1).view(torch.float16)  # next fp16 up (s16 >= 0, finite)
    return torch.where(down, bumped, s16)


def _quantize_torch(x: torch.Tensor, g: int) -> tuple[torch.Tensor, torch.Tensor]:
    d = x.shape[-1]
    xg = x.to(torch.float32).reshape(*x.shape[:-1], d // g, g)  # [..., NG, G]
    amax = xg.abs().amax(dim=-1)  # [..., NG]
    scales = fp16_scale_from_amax(amax)  # [..., NG] fp16
    s = scales.to(torch.float32).unsqueeze(-1)  # [..., NG, 1]
    safe = torch.where(s > 0, s, torch.ones_like(s))
    q = torch.round(xg / safe).clamp(QMIN, QMAX)  # round half to even
    q = torch.where(s > 0, q, torch.zeros_like(q))
    codes = (q + ZERO_CODE).to(torch.uint8).reshape(x.shape)
    return codes, scales


def _dequantize_torch(codes: torch.Tensor, scales: torch.Tensor, g: int, dtype: torch.dtype) -> torch.Tensor:
    d = codes.shape[-1]
    q = (codes.to(torch.int32) & 15).reshape(*codes.shape[:-1], d // g, g) - ZERO_CODE  # [..., NG, G]
    x = q.to(torch.float32) * scales.to(torch.float32).unsqueeze(-1)
    return x.reshape(codes.shape).to(dtype)


def check_float_tensor(x: torch.Tensor) -> None:
    """TypeError/ValueError unless ``x`` is a float16/bfloat16/float32 tensor with a non-empty last dim."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"x.dtype={x.dtype} is not one of float16, bfloat16, float32")
    if x.dim() == 0 or x.shape[-1] == 0:
        raise ValueError(f"x must have a non-empty last dim, got shape {tuple(x.shape)}")


def quantize_int4(
    x: torch.Tensor, group_size: int | None = None, backend: str = "torch"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize ``x [..., D]`` to INT4 codes ``[..., D]`` (uint8, 0..15) and fp16 scales ``[..., D // G]``."""
    check_backend(backend)
    check_float_tensor(x)
    g = resolve_group_size(x.shape[-1], group_size)
    if backend == "triton":
        from kernels.quant import quantize_int4_triton

        return quantize_int4_triton(x, g)
    return _quantize_torch(x, g)


def dequantize_int4(
    codes: torch.Tensor,
    scales: torch.Tensor,
    group_size: int | None = None,
    dtype: torch.dtype = torch.float16,
    backend: str = "torch",
) -> torch.Tensor:
    """Dequantize INT4 ``codes [..., D]`` with fp16 ``scales [..., D // G]`` to ``dtype``."""
    check_backend(backend)
    if codes.dtype != torch.uint8:
        raise TypeError(f"codes.dtype={codes.dtype} must be torch.uint8")
    if codes.dim() == 0 or codes.shape[-1] == 0:
        raise ValueError(f"codes must have a non-empty last dim, got shape {tuple(codes.shape)}")
    g = resolve_group_size(codes.shape[-1], group_size)
    want = (*codes.shape[:-1], codes.shape[-1] // g)
    if tuple(scales.shape) != want:
        raise ValueError(f"scales.shape={tuple(scales.shape)} must be {want} for codes {tuple(codes.shape)}, G={g}")
    if dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"dtype={dtype} is not one of float16, bfloat16, float32")
    if backend == "triton":
        from kernels.quant import dequantize_int4_triton

        return dequantize_int4_triton(codes, scales, g, dtype)
    return _dequantize_torch(codes, scales, g, dtype)
