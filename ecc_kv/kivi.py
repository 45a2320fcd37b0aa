"""KIVI (Liu et al., 2024): keys quantized per channel, values per token, recent tokens in fp16.

Keys have outlier *channels*, so KIVI groups each channel along ``group_size`` consecutive
tokens (one scale + zero per channel per token group); values are quantized per token
(groups of ``group_size`` along head_dim). The most recent tokens stay in fp16 (the
*residual*): as in the reference code, after a prefill of ``T`` tokens the keys keep
``T mod residual`` tokens in fp16 (so the quantized part is whole token groups) and the
values keep the last ``min(residual, T)``. During decoding (``KiviLayer.append``) new keys
wait in the fp16 residual until ``residual`` of them fill a block, which is then quantized
per channel; values are quantized one token at a time once they leave the window.
Asymmetric min-max throughout (``ecc_kv.uniform_quant``), stored with ``ecc_kv.bitpack``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ecc_kv.bitpack import PackedTensor, quantize_pack, unpack_dequantize


def check_kivi(bits: int, group_size: int, residual: int) -> None:
    """ValueError unless the KIVI parameters are consistent."""
    if bits not in (1, 2, 3, 4, 5, 6, 7, 8):
        raise ValueError(f"kivi bits={bits!r} must be an int in 1..8")
    if not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"kivi_group={group_size!r} must be a positive int")
    if not isinstance(residual, int) or residual < 0 or (residual and residual % group_size):
        raise ValueError(f"kivi_residual={residual!r} must be a non-negative multiple of kivi_group={group_size}")


def _quant_keys(k: torch.Tensor, bits: int, g: int, backend: str) -> PackedTensor:
    # k: [B, H, Tq, D] with Tq a multiple of g -> channels along tokens: [B, H, D, Tq]
    return quantize_pack(k.transpose(-1, -2).contiguous(), bits, group_size=g, scheme="minmax", backend=backend)


def dequant_keys(p: PackedTensor, dtype: torch.dtype, backend: str) -> torch.Tensor:
    """A packed key chunk (channels along tokens) back to ``[B, H, Tq, D]``."""
    return unpack_dequantize(p, dtype, backend).transpose(-1, -2)  # [B, H, Tq, D]


def _value_group(d: int, g: int) -> int | None:
    return g if d % g == 0 and g < d else None


@dataclass
class KiviLayer:
    """One layer's KIVI cache: packed chunks plus fp16 residuals for keys and values."""

    bits: int
    group_size: int = 32
    residual: int = 32
    backend: str = "torch"
    k_chunks: list[PackedTensor] = field(default_factory=list)
    v_chunks: list[PackedTensor] = field(default_factory=list)
    k_res: torch.Tensor | None = None  # [B, H, r_k, D] fp16
    v_res: torch.Tensor | None = None  # [B, H, r_v, D]

    def __post_init__(self) -> None:
        check_kivi(self.bits, self.group_size, self.residual)

    def _cat(self, a: torch.Tensor | None, b: torch.Tensor) -> torch.Tensor:
        return b if a is None else torch.cat([a, b], dim=-2)

    def append(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """Add tokens k, v: [B, H, t, D] (a prefill or one decode step)."""
        g = self.group_size
        kr = self._cat(self.k_res, k)
        n_q = kr.shape[-2] - (kr.shape[-2] % self.residual if self.residual else 0)
        if self.residual == 0:
            n_q = kr.shape[-2] - kr.shape[-2] % g
        if n_q:
            self.k_chunks.append(_quant_keys(kr[..., :n_q, :], self.bits, g, self.backend))
        self.k_res = kr[..., n_q:, :]
        vr = self._cat(self.v_res, v)
        n_v = max(0, vr.shape[-2] - self.residual)
        if n_v:
            gv = _value_group(vr.shape[-1], g)
            self.v_chunks.append(quantize_pack(vr[..., :n_v, :].contiguous(), self.bits, group_size=gv,
                                               scheme="minmax", backend=self.backend))
        self.v_res = vr[..., n_v:, :]

    def keys_values(self, dtype: torch.dtype = torch.float16) -> tuple[torch.Tensor, torch.Tensor]:
        """The cache as the attention reads it: dequantized chunks then the fp16 residual."""
        ks = [dequant_keys(p, dtype, self.backend) for p in self.k_chunks] + [self.k_res.to(dtype)]
        vs = [unpack_dequantize(p, dtype, self.backend) for p in self.v_chunks] + [self.v_res.to(dtype)]
        return torch.cat(ks, dim=-2), torch.cat(vs, dim=-2)

    def storage(self) -> dict[str, float]:
        """Real bytes stored for K and V (packed chunks + fp16 residuals) and their nominal bits."""
        out: dict[str, float] = {}
        for name, chunks, res in (("k", self.k_chunks, self.k_res), ("v", self.v_chunks, self.v_res)):
            packed = sum(p.nbytes()["total"] for p in chunks)
            n_q = sum(p.numel() for p in chunks)
            n_res = res.numel() if res is not None else 0
            n = n_q + n_res
            out[f"{name}_bytes_real"] = float(packed + 2 * n_res)
            out[f"{name}_avg_bits"] = (self.bits * n_q + 16.0 * n_res) / max(1, n)
            out[f"{name}_numel"] = float(n)
        return out


def kivi_roundtrip(
    k: torch.Tensor, v: torch.Tensor, bits: int, group_size: int = 32, residual: int = 32, backend: str = "torch"
) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """Prefill k, v [B, H, T, D] into a KIVI cache and read them back: (k_hat, v_hat, storage)."""
    layer = KiviLayer(bits, group_size, residual, backend)
    layer.append(k, v)
    k_hat, v_hat = layer.keys_values(k.dtype)
    return k_hat, v_hat, layer.storage()
