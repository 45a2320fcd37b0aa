"""Physical row layouts of the paged ECC cache: how one token-head row of codewords is stored.

A row holds the ``D`` INT4 values of one token and KV head. Every stored bit is a code bit
(the nominal rate), padding aside:

======== ============================================= =======================
codec    row bytes                                     layout
======== ============================================= =======================
none     ``D / 2``                                     two codes per byte, value ``2i`` in the low nibble
hamming84 ``D``                                        one 8-bit codeword per byte
hamming74 ``7 D / 8``                                  groups of 8 codewords in 7 bytes: byte ``j`` holds
                                                       codeword ``j`` in bits 0..6 and bit ``j`` of
                                                       codeword 7 in bit 7
golay2412 ``3 ceil(D / 3)``                            ``NC = ceil(D / 3)`` 24-bit codewords (values
                                                       ``3c, 3c+1, 3c+2``; a partial last codeword is
                                                       padded with code 8 = zero) in three byte planes:
                                                       byte ``p * NC + c`` is bits ``8p..8p+7`` of codeword ``c``
======== ============================================= =======================

The planar Golay layout keeps each plane contiguous, so the fused kernel loads three
contiguous byte vectors and rebuilds 24-bit words in int32 registers. The bit layout
*inside* a codeword is the codec's (``ecc_kv.codecs`` / ``kernels.codecs``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_CODEC_BITS = {None: 4, "hamming74": 7, "hamming84": 8, "golay2412": 24}


@dataclass(frozen=True)
class Layout:
    """Row layout of one codec at head dim ``head_dim``."""

    codec: str | None
    head_dim: int

    @property
    def values_per_word(self) -> int:
        return 3 if self.codec == "golay2412" else 1

    @property
    def words_per_row(self) -> int:
        return -(-self.head_dim // self.values_per_word)

    @property
    def word_bits(self) -> int:
        return _CODEC_BITS[self.codec]

    @property
    def row_bytes(self) -> int:
        d = self.head_dim
        return {None: d // 2, "hamming84": d, "hamming74": 7 * d // 8, "golay2412": 3 * self.words_per_row}[self.codec]

    @property
    def padded_values(self) -> int:
        return self.words_per_row * self.values_per_word

    # --- codes <-> logical words ----------------------------------------------------------
    def encode(self, codes: torch.Tensor) -> torch.Tensor:
        """INT4 codes ``[..., D]`` (uint8) -> logical codewords ``[..., NW]`` (int32)."""
        if self.codec is None:
            return codes.to(torch.int32)
        from ecc_kv.codecs import get_codec

        pad = self.padded_values - self.head_dim
        if pad:
            codes = torch.cat([codes, torch.full((*codes.shape[:-1], pad), 8, dtype=codes.dtype, device=codes.device)], -1)
        return get_codec(self.codec, backend="torch").encode(codes).to(torch.int32)

    def decode(self, words: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logical codewords ``[..., NW]`` -> (codes ``[..., D]`` uint8, status ``[..., NW]`` uint8)."""
        if self.codec is None:
            return words.to(torch.uint8), torch.zeros_like(words, dtype=torch.uint8)
        from ecc_kv.codecs import get_codec

        codec = get_codec(self.codec, backend="torch")
        cw = words.to(torch.int32) if self.codec == "golay2412" else words.to(torch.uint8)
        codes, status = codec.decode(cw)
        return codes[..., : self.head_dim].to(torch.uint8), status.to(torch.uint8)

    def value_status(self, status: torch.Tensor) -> torch.Tensor:
        """Per-codeword status ``[..., NW]`` -> per-value status ``[..., D]``."""
        if self.values_per_word == 1:
            return status
        return status.repeat_interleave(self.values_per_word, dim=-1)[..., : self.head_dim]

    # --- logical words <-> stored bytes ----------------------------------------------------
    def words_to_bytes(self, words: torch.Tensor) -> torch.Tensor:
        """Logical codewords ``[..., NW]`` -> stored row bytes ``[..., W]`` uint8."""
        w = words.to(torch.int32)
        if self.codec is None:
            return (w[..., 0::2] | (w[..., 1::2] << 4)).to(torch.uint8)
        if self.codec == "hamming84":
            return w.to(torch.uint8)
        if self.codec == "hamming74":
            g = w.reshape(*w.shape[:-1], -1, 8)  # [..., D/8, 8]
            shifts = torch.arange(7, device=w.device, dtype=torch.int32)
            top = ((g[..., 7:8] >> shifts) & 1) << 7  # bit j of codeword 7 -> bit 7 of byte j
            return (g[..., :7] | top).to(torch.uint8).reshape(*w.shape[:-1], -1)
        planes = [(w >> (8 * p)) & 0xFF for p in range(3)]  # golay: [..., NC] each
        return torch.cat(planes, dim=-1).to(torch.uint8)

    def bytes_to_words(self, data: torch.Tensor) -> torch.Tensor:
        """Stored row bytes ``[..., W]`` -> logical codewords ``[..., NW]`` int32."""
        b = data.to(torch.int32)
        if self.codec is None:
            return torch.stack([b & 15, b >> 4], dim=-1).reshape(*b.shape[:-1], -1)
        if self.codec == "hamming84":
            return b
        if self.codec == "hamming74":
            g = b.reshape(*b.shape[:-1], -1, 7)  # [..., D/8, 7]
            shifts = torch.arange(7, device=b.device, dtype=torch.int32)
            last = (((g >> 7) & 1) << shifts).sum(-1, keepdim=True)  # [..., D/8, 1]
            return torch.cat([g & 0x7F, last], dim=-1).reshape(*b.shape[:-1], -1).to(torch.int32)
        nc = self.words_per_row
        return b[..., :nc] | (b[..., nc : 2 * nc] << 8) | (b[..., 2 * nc :] << 16)

    def pack(self, codes: torch.Tensor) -> torch.Tensor:
        """INT4 codes ``[..., D]`` -> stored row bytes ``[..., W]`` (encode + pack)."""
        return self.words_to_bytes(self.encode(codes))

    def unpack(self, data: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Stored row bytes ``[..., W]`` -> (codes ``[..., D]``, per-codeword status ``[..., NW]``)."""
        return self.decode(self.bytes_to_words(data))


def get_layout(codec: str | None, head_dim: int) -> Layout:
    """The row layout for ``codec`` (None: raw INT4); ValueError for unknown codecs or bad head dims."""
    if codec not in _CODEC_BITS:
        raise ValueError(f"codec={codec!r} has no cache layout; choose one of {list(_CODEC_BITS)}")
    if head_dim % 2 or (codec == "hamming74" and head_dim % 8):
        raise ValueError(f"head_dim={head_dim} must be even (a multiple of 8 for hamming74)")
    return Layout(codec, head_dim)
