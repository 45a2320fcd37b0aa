"""Real packed storage for quantized K/V at per-token widths, and its byte accounting.

Layout (``PackedTensor``), per group of ``G`` values quantized at ``b`` bits (1..8):

- ``data``: one uint8 buffer; group ``m`` owns ``b_m`` *bit planes* of ``PB = ceil(G / 8)``
  bytes each, at byte offset ``off_m = PB * sum_{i<m} b_i`` (groups in row-major order of
  ``[..., D // G]``). Bit ``k`` of byte ``j`` of plane ``p`` is bit ``p`` of the code of value
  ``8 j + k``. A group therefore stores exactly ``b * ceil(G / 8)`` bytes, no padding to a
  word; the offsets are a prefix sum of the widths and are not stored.
- ``widths``: uint8 per token per head, stored only when widths vary (adaptive modes);
  fixed-width modes keep the width in the header (``fixed_bits``).
- ``scale`` fp16 per group; ``zero`` fp16 per group (``None`` for the symmetric grid).
- ``out_val`` fp16 and ``out_pos`` (uint8 when G <= 256, else int16) per outlier.

``nbytes()`` counts exactly these tensors: the *real* storage. The *ideal* size is
``numel * mean_width / 8`` bytes (what ``16 / average bits`` assumes). ``backend="triton"``
runs ``kernels.bitpack``; the bytes are the same bit for bit.

Bit errors hit ``data`` only (the codes); metadata are assumed protected or in a safer
memory, and are counted in the storage either way (see docs/qaq.md).
"""

from __future__ import annotations

import math

import torch

from ecc_kv.quant import check_backend, check_float_tensor, resolve_group_size
from ecc_kv.uniform_quant import (
    QuantizedGroups,
    check_scheme,
    dequantize_groups_torch,
    group_bits,
    outliers_per_tail,
    quantize,
)


class PackedTensor:
    """A quantized tensor as the bytes a cache would hold (see the module docstring).

    ``data`` may be *sized on the device*: a Triton pack with widths on the GPU writes into a
    worst-case buffer and sums the widths itself, so it needs no host sync; the first read of
    ``data`` (or ``nbytes``) fetches the size, checks the widths (ValueError if any was outside
    the valid range) and narrows ``data`` to the bytes written (a view).
    """

    def __init__(
        self, data: torch.Tensor, widths: torch.Tensor | None, fixed_bits: int, scale: torch.Tensor,
        zero: torch.Tensor | None, out_val: torch.Tensor, out_pos: torch.Tensor, shape: tuple[int, ...],
        group_size: int, scheme: str, pending: tuple[torch.Tensor, int] | None = None,
    ) -> None:
        self._data = data  # uint8 [sum_m b_m * PB] (a larger buffer while ``pending``)
        self._pending = pending  # (workspace with the device-side size, lowest valid width)
        self.widths = widths  # uint8 [prod(shape[:-1])] or None (fixed width)
        self.fixed_bits = fixed_bits  # the width when ``widths`` is None, else 0
        self.scale = scale  # fp16 [M]
        self.zero = zero  # fp16 [M] or None (symmetric)
        self.out_val = out_val  # fp16 [M, 2k]
        self.out_pos = out_pos  # uint8 or int16 [M, 2k]
        self.shape = shape
        self.group_size = group_size
        self.scheme = scheme

    @property
    def data(self) -> torch.Tensor:
        """uint8 code bytes (resolves a device-sized pack: one host read, raises on invalid widths)."""
        if self._pending is not None:
            from kernels.bitpack import packed_size

            ws, lo = self._pending
            self._data = self._data[: packed_size(ws, self.group_size, lo)]
            self._pending = None
        return self._data

    @property
    def n_groups(self) -> int:
        return self.scale.shape[0]

    @property
    def plane_bytes(self) -> int:
        return (self.group_size + 7) // 8

    def group_widths(self) -> torch.Tensor:
        """uint8 [M]: the width of every group."""
        lead = self.shape[:-1]
        per_row = self.shape[-1] // self.group_size
        bits = self.widths.reshape(lead) if self.widths is not None else self.fixed_bits
        return group_bits(bits, tuple(lead), per_row, self.scale.device, check=False)

    def offsets(self) -> torch.Tensor:
        """int64 [M]: byte offset of each group's first plane (prefix sum of widths)."""
        return group_offsets(self.group_widths(), self.plane_bytes)

    def nbytes(self) -> dict[str, int]:
        """Bytes stored, by part, and their ``total``."""
        parts = {
            "codes": self.data.numel(),
            "widths": self.widths.numel() if self.widths is not None else 0,
            "scales": 2 * self.scale.numel(),
            "zeros": 2 * self.zero.numel() if self.zero is not None else 0,
            "outliers": self.out_val.numel() * 2 + self.out_pos.numel() * self.out_pos.element_size(),
        }
        parts["total"] = sum(parts.values())
        return parts

    def numel(self) -> int:
        return math.prod(self.shape)


def group_offsets(bits: torch.Tensor, plane_bytes: int) -> torch.Tensor:
    """int64 [M] exclusive prefix sum of ``bits * plane_bytes``."""
    b = bits.to(torch.int64)
    return (torch.cumsum(b, 0) - b) * plane_bytes


def byte_report(p: PackedTensor, ideal_bits: float | None = None) -> dict[str, float]:
    """Real and ideal storage of one packed tensor versus fp16 (bytes, bits per value, ratios)."""
    n = p.numel()
    parts = p.nbytes()
    bits = ideal_bits if ideal_bits is not None else float(p.group_widths().to(torch.float64).mean())
    return {
        "avg_bits": bits,
        "bytes_real": float(parts["total"]),
        "bytes_ideal": n * bits / 8.0,
        "bytes_fp16": 2.0 * n,
        "bits_per_value_real": 8.0 * parts["total"] / n,
        "ratio_ideal": 16.0 / bits,
        "ratio_real": 2.0 * n / parts["total"],
        **{f"bytes_{k}": float(v) for k, v in parts.items() if k != "total"},
    }


# ----------------------------------------------------------------------------- torch twin


def transpose8(x: torch.Tensor) -> torch.Tensor:
    """Transpose 8x8 bit matrices held in int64 words: bit p of byte k <-> bit k of byte p (an involution)."""
    t = (x ^ (x >> 7)) & 0x00AA00AA00AA00AA
    x = x ^ t ^ (t << 7)
    t = (x ^ (x >> 14)) & 0x0000CCCC0000CCCC
    x = x ^ t ^ (t << 14)
    t = (x ^ (x >> 28)) & 0x00000000F0F0F0F0
    return x ^ t ^ (t << 28)


def _planes_torch(codes: torch.Tensor, pb: int, n_planes: int) -> torch.Tensor:
    """codes uint8 [M, G] -> planes uint8 [M, n_planes, PB] (byte j of plane p: bit p of codes 8j..8j+7)."""
    m, g = codes.shape
    c = codes if g == pb * 8 else torch.nn.functional.pad(codes, (0, pb * 8 - g))
    shifts = 8 * torch.arange(8, device=codes.device, dtype=torch.int64)
    w = (c.reshape(m, pb, 8).to(torch.int64) << shifts).sum(-1)  # [M, PB]: byte k = code 8j+k
    t = transpose8(w)  # byte p = plane p
    return ((t[:, None, :] >> shifts[:n_planes, None]) & 255).to(torch.uint8)  # [M, P, PB]


def pack_codes_torch(codes: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """Pack codes uint8 [M, G] at widths uint8 [M] into the planar byte stream (uint8 [sum b * PB])."""
    pb = (codes.shape[1] + 7) // 8
    n_planes = int(bits.max()) if bits.numel() else 1
    planes = _planes_torch(codes, pb, n_planes)  # [M, P, PB]
    keep = torch.arange(n_planes, device=codes.device)[None, :] < bits.to(torch.int64)[:, None]  # [M, P]
    return planes[keep].reshape(-1)


def unpack_codes_torch(data: torch.Tensor, bits: torch.Tensor, g: int) -> torch.Tensor:
    """Inverse of ``pack_codes_torch``: codes uint8 [M, G]."""
    m = bits.shape[0]
    pb = (g + 7) // 8
    n_planes = int(bits.max()) if bits.numel() else 1
    keep = torch.arange(n_planes, device=data.device)[None, :] < bits.to(torch.int64)[:, None]  # [M, P]
    planes = torch.zeros(m, n_planes, pb, dtype=torch.int64, device=data.device)
    planes[keep] = data.reshape(-1, pb).to(torch.int64)
    shifts = 8 * torch.arange(8, device=data.device, dtype=torch.int64)
    w = transpose8((planes << shifts[:n_planes, None]).sum(1))  # [M, PB]: byte k = code 8j+k
    codes = (w[..., None] >> shifts) & 255  # [M, PB, 8]
    return codes.reshape(m, pb * 8)[:, :g].to(torch.uint8)


# ----------------------------------------------------------------------------- public API


def _pos_dtype(g: int) -> torch.dtype:
    return torch.uint8 if g <= 256 else torch.int16


def pack(q: QuantizedGroups, adaptive: bool | None = None, backend: str = "torch") -> PackedTensor:
    """Pack quantized groups into real bytes. ``adaptive=None``: store widths iff they vary."""
    check_backend(backend)
    per_row = q.shape[-1] // q.group_size
    if backend == "triton":
        from kernels.bitpack import pack_codes_triton

        data = pack_codes_triton(q.codes, q.bits)
    else:
        data = pack_codes_torch(q.codes, q.bits)
    tok_bits = q.bits.reshape(-1, per_row)[:, 0].contiguous()
    if adaptive is None:
        adaptive = bool(tok_bits.numel()) and bool((tok_bits != tok_bits[0]).any())
    widths = tok_bits if adaptive else None
    fixed = 0 if adaptive else (int(tok_bits[0]) if tok_bits.numel() else 1)
    zero = None if q.scheme == "symmetric" else q.zero
    return PackedTensor(data, widths, fixed, q.scale, zero, q.out_val, q.out_pos.to(_pos_dtype(q.group_size)),
                        q.shape, q.group_size, q.scheme)


def _zero_or_zeros(p: PackedTensor) -> torch.Tensor:
    return p.zero if p.zero is not None else torch.zeros_like(p.scale)


def unpack(p: PackedTensor, backend: str = "torch") -> QuantizedGroups:
    """The codes and metadata stored in ``p``."""
    check_backend(backend)
    bits = p.group_widths()
    if backend == "triton":
        from kernels.bitpack import unpack_codes_triton

        codes = unpack_codes_triton(p.data, bits, p.group_size)
    else:
        codes = unpack_codes_torch(p.data, bits, p.group_size)
    return QuantizedGroups(codes, bits, p.scale, _zero_or_zeros(p), p.out_val, p.out_pos.to(torch.int16),
                           p.shape, p.group_size, p.scheme)


def _check_widths(bits: int | torch.Tensor, lead: tuple[int, ...], lo: int) -> None:
    """Host-side width check where it costs no device sync (an int, or a tensor in host memory)."""
    if isinstance(bits, torch.Tensor):
        if tuple(bits.shape) != lead:
            raise ValueError(f"bits.shape={tuple(bits.shape)} must be x.shape[:-1]={lead}")
        if bits.is_floating_point() or bits.is_complex() or bits.dtype == torch.bool:
            raise TypeError(f"bits must be an integer tensor, got dtype {bits.dtype}")
        if bits.device.type == "cpu" and bits.numel() and bool(((bits < lo) | (bits > 8)).any()):
            raise ValueError(f"bits must lie in {lo}..8{' (symmetric needs >= 2)' if lo == 2 else ''}, "
                             f"got range [{int(bits.min())}, {int(bits.max())}]")
    elif isinstance(bits, bool) or not isinstance(bits, int) or not lo <= bits <= 8:
        raise ValueError(f"bits={bits!r} must be an int in {lo}..8 (or a tensor of them)")


def _quantize_pack_triton(x: torch.Tensor, bits: int | torch.Tensor, g: int, scheme: str, k: int,
                          adaptive: bool | None) -> PackedTensor:
    """No host sync when the widths live on the GPU (width sums, then one fused launch; the size is read lazily)."""
    from kernels.bitpack import quantize_pack_triton

    lead = tuple(x.shape[:-1])
    per_row = x.shape[-1] // g
    lo = 2 if scheme == "symmetric" else 1
    _check_widths(bits, lead, lo)
    total = None
    if isinstance(bits, torch.Tensor):
        tok = bits.reshape(-1)
        if tok.device.type == "cpu":  # validated above: the size is known without a device round trip
            total = int(tok.to(torch.int64).sum()) * per_row * ((g + 7) // 8)
        tok = tok.to(x.device)
        if adaptive is None:
            adaptive = bool(tok.numel()) and bool((tok != tok[0]).any())
        kbits: int | torch.Tensor = tok
        fixed = 0 if adaptive else (int(tok[0]) if tok.numel() else 1)
    else:
        kbits, fixed, adaptive = bits, bits, False
    res = quantize_pack_triton(x.reshape(-1, g), kbits, scheme == "symmetric", k, n_per_row=per_row,
                               total_bytes=total, pos_dtype=_pos_dtype(g), write_widths=bool(adaptive))
    pending = (res["ws"], lo) if res["ws"] is not None and total is None else None
    return PackedTensor(res["data"], res["widths"] if adaptive else None, fixed, res["scale"],
                        None if scheme == "symmetric" else res["zero"], res["out_val"], res["out_pos"],
                        tuple(x.shape), g, scheme, pending)


def quantize_pack(
    x: torch.Tensor,
    bits: int | torch.Tensor,
    group_size: int | None = None,
    scheme: str = "minmax",
    outliers: float = 0.0,
    adaptive: bool | None = None,
    backend: str = "torch",
) -> PackedTensor:
    """Quantize ``x [..., D]`` at ``bits`` and pack it; one fused kernel on Triton (after a width-sum launch).

    On Triton with widths on the GPU the call does not wait for the GPU: invalid widths raise
    ValueError when ``data`` is first read (see ``PackedTensor``); widths given as an int or a
    host tensor are checked at once.
    """
    check_backend(backend)
    check_scheme(scheme)
    if backend != "triton" or scheme == "mean":
        return pack(quantize(x, bits, group_size, scheme, outliers, backend="torch"), adaptive, backend)
    check_float_tensor(x)
    g = resolve_group_size(x.shape[-1], group_size)
    return _quantize_pack_triton(x, bits, g, scheme, outliers_per_tail(outliers, g), adaptive)


def unpack_dequantize(p: PackedTensor, dtype: torch.dtype = torch.float16, backend: str = "torch") -> torch.Tensor:
    """The tensor ``p`` stands for, in ``dtype``; one fused kernel on Triton (after a width-sum launch if adaptive)."""
    check_backend(backend)
    if backend == "triton":
        from kernels.bitpack import unpack_dequantize_triton

        bits = p.widths if p.widths is not None else p.fixed_bits
        x = unpack_dequantize_triton(p.data, bits, p.scale, p.zero, p.out_val, p.out_pos, p.group_size,
                                     p.scheme != "minmax", dtype, n_per_row=p.shape[-1] // p.group_size)
        return x.reshape(p.shape)
    return dequantize_groups_torch(unpack(p, "torch"), dtype).reshape(p.shape)


def replace_data(p: PackedTensor, data: torch.Tensor) -> PackedTensor:
    """A copy of ``p`` with other code bytes (e.g. after fault injection)."""
    if data.shape != p.data.shape or data.dtype != torch.uint8:
        raise ValueError(f"data must be uint8 {tuple(p.data.shape)}, got {data.dtype} {tuple(data.shape)}")
    return PackedTensor(data, p.widths, p.fixed_bits, p.scale, p.zero, p.out_val, p.out_pos, p.shape,
                        p.group_size, p.scheme)
