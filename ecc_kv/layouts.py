"""Physical storage of INT4 codes and ECC codewords at the nominal code rate (torch reference).

The codec contract (``ecc_kv.codecs``) is logical: one codeword per integer element. This module
defines what is really stored per row (the last dim, e.g. one token of one head), byte for byte;
``kernels.packed_codecs`` and ``kernels.fused_codec`` write and read exactly these bytes.

=========  ====================================================  ==============  ==========
layout     stored per row of n values                            bytes           bits/value
=========  ====================================================  ==============  ==========
int4       byte j = q[2j] | q[2j+1] << 4 (plain packed INT4)      ceil(n/2)       4
hamming84  byte i = codeword of q[i]                              n               8
hamming74  [data | Q0 | Q1 | Q2]: data = plain packed INT4 row;   28*ceil(n/32)   7
           per group j of 32 codes, Q_b word j (little endian)
           nibble i = parity triple of code 32j+8b+i (bits 0-2)
           and bit b of the triple of code 32j+24+i (bit 3)
golay2412  [data | parity]: data = plain packed INT4 row (12      24*ceil(n/24)   8
           bits per codeword, bits 12c..12c+11); parity plane
           = the 12 parity bits of codeword c at the same bits
=========  ====================================================  ==============  ==========

Rows are padded with zero codes to the group (32 values Hamming(7,4), 8 codewords Golay), so the
nominal rate is exact whenever n is a multiple of the group (the Triton kernels require it).
Both ECC layouts with planes are systematic: the data plane is readable as plain INT4 without
decoding. The fp16 quantization scales are stored separately (``ecc_kv.quant``), outside the codes.
"""

from __future__ import annotations

import torch

from ecc_kv.codecs import BACKENDS, canonical_name, get_codec

LAYOUTS = ("int4", "hamming74", "hamming84", "golay2412")
# row length unit the Triton packed kernels need (the torch functions pad any n)
KERNEL_GROUP_VALUES = {"int4": 8, "hamming74": 32, "hamming84": 8, "golay2412": 24}


def _name(name: str) -> str:
    return "int4" if name in ("int4", "none") else canonical_name(name)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def nbytes(name: str, n: int) -> int:
    """Stored bytes of one row of ``n`` INT4 values in layout ``name``."""
    name = _name(name)
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    if name == "golay2412" and n % 3:
        raise ValueError(f"golay2412 rows hold a multiple of 3 values, got n={n}")
    return {"int4": _cdiv(n, 2), "hamming84": n, "hamming74": 28 * _cdiv(n, 32), "golay2412": 24 * _cdiv(n, 24)}[name]


def bits_per_value(name: str) -> float:
    """Nominal stored bits per INT4 value (excluding scales)."""
    return {"int4": 4.0, "hamming84": 8.0, "hamming74": 7.0, "golay2412": 8.0}[_name(name)]


def _pad_last(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-1] == size:
        return x
    pad = torch.zeros(*x.shape[:-1], size - x.shape[-1], dtype=x.dtype, device=x.device)
    return torch.cat([x, pad], dim=-1)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """uint8 codes ``[..., n]`` (low nibble used) -> packed bytes ``[..., ceil(n/2)]``, even index in the low nibble."""
    n = q.shape[-1]
    q = _pad_last(q & 15, 2 * _cdiv(n, 2)).reshape(*q.shape[:-1], -1, 2)  # [..., n/2, 2]
    return q[..., 0] | (q[..., 1] << 4)


def unpack_int4(b: torch.Tensor, n: int) -> torch.Tensor:
    """Packed bytes ``[..., ceil(n/2)]`` -> uint8 codes ``[..., n]``."""
    return torch.stack([b & 15, b >> 4], dim=-1).reshape(*b.shape[:-1], -1)[..., :n]


def pack(name: str, words: torch.Tensor) -> torch.Tensor:
    """Logical words ``[..., m]`` (codes for int4, codewords otherwise) -> stored bytes ``[..., nbytes]``."""
    name = _name(name)
    if name == "int4":
        return pack_int4(words)
    if name == "hamming84":
        return words.to(torch.uint8).clone()
    lead = words.shape[:-1]
    if name == "hamming74":
        n = words.shape[-1]
        cw = _pad_last(words, 32 * _cdiv(n, 32))  # [..., n']
        data = pack_int4(cw & 15)
        par = ((cw >> 4) & 7).reshape(*lead, -1, 4, 8)  # [..., G, 4 sub-words, 8 nibbles]
        planes = [par[..., b, :] | (((par[..., 3, :] >> b) & 1) << 3) for b in range(3)]  # Q_b nibbles [..., G, 8]
        return torch.cat([data] + [pack_int4(p.reshape(*lead, -1)) for p in planes], dim=-1)
    m = words.shape[-1]  # golay2412: int32 codewords
    cw = _pad_last(words.to(torch.int32), 8 * _cdiv(m, 8))

    def nibbles(x: torch.Tensor) -> torch.Tensor:  # 12-bit chunks -> their 3 nibbles in stream order
        return torch.stack([x & 15, (x >> 4) & 15, (x >> 8) & 15], dim=-1).reshape(*lead, -1).to(torch.uint8)

    return torch.cat([pack_int4(nibbles(cw)), pack_int4(nibbles(cw >> 12))], dim=-1)


def unpack(name: str, data: torch.Tensor, n: int) -> torch.Tensor:
    """Stored bytes ``[..., nbytes(name, n)]`` -> logical words of ``n`` values (codes or codewords)."""
    name = _name(name)
    want = nbytes(name, n)
    if data.dtype != torch.uint8 or data.shape[-1] != want:
        raise ValueError(f"{name} rows of n={n} values are {want} uint8 bytes, got {data.dtype} last dim {data.shape[-1]}")
    if name == "int4":
        return unpack_int4(data, n)
    if name == "hamming84":
        return data.clone()
    lead = data.shape[:-1]
    if name == "hamming74":
        npad = 32 * _cdiv(n, 32)
        d = unpack_int4(data[..., : npad // 2], npad)
        qs = [unpack_int4(data[..., npad // 2 + b * npad // 8 : npad // 2 + (b + 1) * npad // 8], npad // 4) for b in range(3)]
        qs = [q.reshape(*lead, -1, 8) for q in qs]  # [..., G, 8]
        p3 = sum(((q >> 3) & 1) << b for b, q in enumerate(qs))
        par = torch.stack([q & 7 for q in qs] + [p3], dim=-2).reshape(*lead, npad)  # [..., G, 4, 8] -> [..., n']
        return (d | (par << 4))[..., :n]
    m = n // 3
    half = data.shape[-1] // 2

    def chunks(b: torch.Tensor) -> torch.Tensor:
        x = unpack_int4(b, 2 * b.shape[-1]).to(torch.int32).reshape(*lead, -1, 3)
        return x[..., 0] | (x[..., 1] << 4) | (x[..., 2] << 8)

    return (chunks(data[..., :half]) | (chunks(data[..., half:]) << 12))[..., :m]


def _check_backend_row(name: str, n: int, backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not one of {BACKENDS}")
    if backend == "triton" and n % KERNEL_GROUP_VALUES[name]:
        raise ValueError(f"the triton {name} kernels need rows of a multiple of {KERNEL_GROUP_VALUES[name]} values, got n={n}")


def encode_stored(name: str, packed: torch.Tensor, n: int, backend: str = "torch") -> torch.Tensor:
    """Plain packed INT4 rows ``[..., ceil(n/2)]`` -> the codec's stored layout ``[..., nbytes(name, n)]``."""
    name = canonical_name(name)
    _check_backend_row(name, n, backend)
    if backend == "triton":
        from kernels.packed_codecs import encode_packed

        return encode_packed(name, packed, n)
    return pack(name, get_codec(name).encode(unpack_int4(packed, n)))


def decode_stored(name: str, stored: torch.Tensor, n: int, backend: str = "torch") -> tuple[torch.Tensor, torch.Tensor]:
    """Stored rows -> (plain packed INT4 ``[..., ceil(n/2)]``, status uint8 per codeword ``[..., n / data_symbols]``)."""
    name = canonical_name(name)
    _check_backend_row(name, n, backend)
    if backend == "triton":
        from kernels.packed_codecs import decode_packed

        out, status, _ = decode_packed(name, stored, n, with_status=True)
        return out, status
    q, status = get_codec(name).decode(unpack(name, stored, n))
    return pack_int4(q), status
