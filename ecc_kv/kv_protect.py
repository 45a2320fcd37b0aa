"""The whole KV protection round trip of one K or V tensor: quantize, encode, inject, decode, interpolate, dequantize.

``roundtrip(x [B, H, T, D], mode, ber=..., seed=...) -> (x_hat, stats)`` is what a full forward pass
applies to every layer's K and V (``ecc_kv.hf``) to evaluate a cache mode under bit errors. The torch
backend composes the torch twins (``quant``, ``codecs``, ``faults``, ``interp``); the Triton backend is
one fused kernel per call (``kernels.kv_roundtrip``) built from the same device functions.

Stored words per mode (the fault models flip exactly these bits; ``stored_bits_per_value`` reports
them, padding included, scales excluded):

==========================  ==================================================  ==========  ======
mode                        stored word (along D, per token row)                bits/word   values
==========================  ==================================================  ==========  ======
fp16                        the value itself (fp16; bf16 inputs stay bf16)      16          1
int4                        packed byte: value 2j in bits 0-3, 2j+1 in 4-7      8           2
int4-hamming                Hamming(7,4) codeword of one INT4 code              7           1
int4-hamming84(-interp)     extended Hamming(8,4) codeword                      8           1
int12-golay                 Golay(24,12) word of values 3j, 3j+1, 3j+2          24          3
adaptive                    Golay words for tokens < sink_tokens, else H(8,4)   24 / 8      3 / 1
int4-msb-secded             H(8,4) of the high 2 bits of values 2j, 2j+1 (bits  12          2
                            0-7) + their raw low 2 bits (bits 8-11)
==========================  ==================================================  ==========  ======

A row whose D is not a multiple of the values per word is padded with code 8 (q = 0); the pad
nibbles are stored, so they take faults, and are dropped on read. fp16 scales (one per token, head
and group) are stored raw beside the words; faults touch them only with ``scale_faults=True``
(16 bits per scale, same channel and ber, stream 1). With ``ber=0`` every INT4 mode returns exactly
the plain INT4 round trip; the fp16 mode returns x unchanged for fp16/bf16 input (fp32 input is
rounded to fp16 once).

Fault streams: Triton keys its generator (SplitMix64) by (seed, global word index = token row * D + word index in the
row), so the result does not depend on the launch grid; the torch path samples positions per stored
tensor (``ecc_kv.faults``). The two backends agree bit for bit at ``ber=0`` and for the same explicit
fault pattern (``flip_masks``); with ``ber>0`` each is deterministic for a seed.
"""

from __future__ import annotations

import torch

from ecc_kv.codecs import get_codec
from ecc_kv.faults import flip_masks as sample_flip_masks
from ecc_kv.faults import validate_fault_args
from ecc_kv.interp import MAX_WINDOW, interpolate_detected
from ecc_kv.modes import CacheMode, get_mode
from ecc_kv.quant import check_backend, dequantize_int4, quantize_int4, resolve_group_size

STAT_KEYS = ("bits_flipped", "corrected", "detected", "interpolated")
# stored word kinds: (values per word, bits per word)
KINDS = {"fp16": (1, 16), "raw": (2, 8), "hamming74": (1, 7), "hamming84": (1, 8), "golay2412": (3, 24), "msb": (2, 12)}


def word_kinds(mode: CacheMode) -> tuple[str, str | None]:
    """(kind of the stored words, kind for sink tokens or None) of a cache mode."""
    if not mode.quantized:
        return "fp16", None
    if mode.codec is None:
        return "raw", None
    if mode.msb_only:
        if mode.codec != "hamming84":
            raise ValueError(f"mode {mode.name!r}: msb_only is implemented for hamming84 only, got {mode.codec!r}")
        return "msb", None
    return mode.codec, mode.sink_codec


def stored_bits_per_value(mode: CacheMode | str, d: int) -> float:
    """Stored bits per K/V value of ``mode`` for head dim ``d`` (pad nibbles included, scales and sink rows excluded)."""
    kind, _ = word_kinds(get_mode(mode) if isinstance(mode, str) else mode)
    s, n = KINDS[kind]
    return -(-d // s) * n / d


def _pad(codes: torch.Tensor, s: int) -> torch.Tensor:
    """Pad codes [N, D] with code 8 to a multiple of s along D."""
    extra = (-codes.shape[-1]) % s
    if extra == 0:
        return codes
    return torch.cat([codes, torch.full((*codes.shape[:-1], extra), 8, dtype=codes.dtype, device=codes.device)], -1)


def encode_words(codes: torch.Tensor, kind: str) -> torch.Tensor:
    """INT4 codes [N, D] (uint8) -> stored words [N, W] (uint8 / int16 / int32) of ``kind``."""
    s, _ = KINDS[kind]
    c = _pad(codes, s)
    if kind == "raw":
        c = c.reshape(*c.shape[:-1], -1, 2)
        return c[..., 0] | (c[..., 1] << 4)
    if kind == "msb":
        c = c.reshape(*c.shape[:-1], -1, 2).to(torch.int32)
        cw = get_codec("hamming84").encode(((c[..., 0] >> 2) | ((c[..., 1] >> 2) << 2)).to(torch.uint8))
        low = (c[..., 0] & 3) | ((c[..., 1] & 3) << 2)
        return (cw.to(torch.int32) | (low << 8)).to(torch.int16)
    return get_codec(kind).encode(c)


def decode_words(words: torch.Tensor, kind: str, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stored words [N, W] -> (codes uint8 [N, D], status per word uint8 [N, W])."""
    if kind == "raw":
        w = words.to(torch.int32)
        codes = torch.stack([w & 15, (w >> 4) & 15], -1).reshape(*w.shape[:-1], -1)
        status = torch.zeros_like(words, dtype=torch.uint8)
    elif kind == "msb":
        w = words.to(torch.int32) & 0xFFF
        m, status = get_codec("hamming84").decode((w & 255).to(torch.uint8))
        m = m.to(torch.int32)
        low = w >> 8
        c0 = ((m & 3) << 2) | (low & 3)
        c1 = (((m >> 2) & 3) << 2) | ((low >> 2) & 3)
        codes = torch.stack([c0, c1], -1).reshape(*w.shape[:-1], -1)
    else:
        codes, status = get_codec(kind).decode(words)
    return codes[..., :d].to(torch.uint8), status


def _values_bad(status: torch.Tensor, kind: str, d: int) -> torch.Tensor:
    """Per-value detected-uncorrectable flags [N, D] from per-word status [N, W]."""
    s, _ = KINDS[kind]
    return (status == 2).repeat_interleave(s, dim=-1)[..., :d]


def _inject_torch(
    words: torch.Tensor, kind: str, ber: float, seed: int, model: str, burst_len: int, stream: int,
    explicit: torch.Tensor | None,
) -> tuple[torch.Tensor, int]:
    """Flip stored bits of words [N, W]: sampled (sparse positions) or from explicit masks [N, D] (int32)."""
    _, n = KINDS[kind]
    keep = (1 << n) - 1
    if explicit is not None:
        masks = explicit[..., : words.shape[-1]].to(torch.int64) & keep
        flipped = (words.to(torch.int64) ^ masks).to(words.dtype)
        return flipped, int(_popcount64(masks).sum())
    if ber == 0 or words.numel() == 0:
        return words, 0
    sub = (seed * 1_000_003 + stream * 7919) % 2**63
    index, masks = sample_flip_masks(words.numel(), n, ber, sub, model, burst_len)
    flat = words.reshape(-1).clone()
    if index.numel():
        idx = index.to(words.device)
        flat[idx] = (flat[idx].to(torch.int64) ^ masks.to(words.device)).to(words.dtype)
    return flat.reshape(words.shape), int(_popcount64(masks).sum())


def _popcount64(m: torch.Tensor) -> torch.Tensor:
    bits = torch.arange(32, dtype=torch.int64, device=m.device)
    return ((m[..., None] >> bits) & 1).sum(-1)


def _roundtrip_fp16(
    x: torch.Tensor, ber: float, seed: int, model: str, burst_len: int, explicit: torch.Tensor | None
) -> tuple[torch.Tensor, dict[str, int]]:
    stored = x if x.dtype in (torch.float16, torch.bfloat16) else x.to(torch.float16)
    words = stored.reshape(-1, x.shape[-1]).view(torch.int16)  # [N, D]
    flipped, nfl = _inject_torch(words, "fp16", ber, seed, model, burst_len, 0,
                                 None if explicit is None else explicit.reshape(words.shape))
    out = flipped.view(stored.dtype).reshape(x.shape).to(x.dtype)
    return (out.clone() if out is x else out), {"bits_flipped": nfl, "corrected": 0, "detected": 0, "interpolated": 0}


def _roundtrip_torch(
    x: torch.Tensor, mode: CacheMode, ber: float, seed: int, model: str, burst_len: int, sink_tokens: int,
    g: int, scale_faults: bool, window: int, explicit: torch.Tensor | None,
) -> tuple[torch.Tensor, dict[str, int]]:
    kind, sink_kind = word_kinds(mode)
    if kind == "fp16":
        return _roundtrip_fp16(x, ber, seed, model, burst_len, explicit)
    b, h, t, d = x.shape
    codes, scales = quantize_int4(x, g)  # [B, H, T, D] uint8, [B, H, T, NG] fp16
    stats = dict.fromkeys(STAT_KEYS, 0)
    n_sink = min(sink_tokens, t) if sink_kind is not None else 0
    parts = [(sink_kind, slice(0, n_sink), 2), (kind, slice(n_sink, t), 0)] if n_sink else [(kind, slice(0, t), 0)]
    out_codes = torch.empty_like(codes)
    bad = torch.zeros(codes.shape, dtype=torch.bool, device=x.device)
    for part_kind, rows, stream in parts:
        c = codes[:, :, rows].reshape(-1, d)  # [N, D]
        ex = None if explicit is None else explicit[:, :, rows].reshape(-1, d)
        words = encode_words(c, part_kind)
        words, nfl = _inject_torch(words, part_kind, ber, seed, model, burst_len, stream, ex)
        dec, status = decode_words(words, part_kind, d)
        stats["bits_flipped"] += nfl
        stats["corrected"] += int((status == 1).sum())
        stats["detected"] += int((status == 2).sum())
        out_codes[:, :, rows] = dec.reshape(b, h, -1, d)
        bad[:, :, rows] = _values_bad(status, part_kind, d).reshape(b, h, -1, d)
    if scale_faults and explicit is None:
        sw = scales.reshape(-1).view(torch.int16)
        sw, nfl = _inject_torch(sw, "fp16", ber, seed, model, burst_len, 1, None)
        scales = sw.view(torch.float16).reshape(scales.shape)
        stats["bits_flipped"] += nfl
    if not mode.interpolate:
        return dequantize_int4(out_codes, scales, g, dtype=x.dtype), stats
    vals = dequantize_int4(out_codes, scales, g, dtype=torch.float32)
    stats["interpolated"] = int(bad.sum())
    return interpolate_detected(vals, bad, window).to(x.dtype), stats


def _check_args(x: torch.Tensor, sink_tokens: int, window: int, flip_masks: torch.Tensor | None) -> None:
    if not isinstance(x, torch.Tensor) or x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"x must be a float16/bfloat16/float32 tensor, got {getattr(x, 'dtype', type(x).__name__)}")
    if x.dim() != 4 or x.shape[-1] == 0:
        raise ValueError(f"x must be [B, H, T, D] with D > 0, got shape {tuple(x.shape)}")
    if isinstance(sink_tokens, bool) or not isinstance(sink_tokens, int) or sink_tokens < 0:
        raise ValueError(f"sink_tokens={sink_tokens!r} must be an int >= 0")
    if isinstance(window, bool) or not isinstance(window, int) or not 1 <= window <= MAX_WINDOW:
        raise ValueError(f"window={window!r} must be an int in 1..{MAX_WINDOW}")
    if flip_masks is not None and (flip_masks.shape != x.shape or flip_masks.dtype != torch.int32):
        raise ValueError(f"flip_masks must be int32 of x's shape {tuple(x.shape)}, got "
                         f"{flip_masks.dtype} {tuple(flip_masks.shape)}")


def roundtrip(
    x: torch.Tensor,
    mode: CacheMode | str,
    *,
    ber: float = 0.0,
    seed: int = 0,
    error_model: str = "bsc",
    burst_len: int = 2,
    sink_tokens: int = 0,
    group_size: int | None = None,
    backend: str = "torch",
    scale_faults: bool = False,
    window: int = 1,
    flip_masks: torch.Tensor | None = None,
    stats_out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, int]]:
    """Store ``x [B, H, T, D]`` in ``mode`` with bit errors and read it back -> (x_hat like x, stats).

    stats (ints): bits_flipped (stored bits flipped, scales included when ``scale_faults``), corrected
    and detected (codewords with status 1 / 2), interpolated (values replaced by ``ecc_kv.interp``).
    ``window``: interpolation search window in tokens. ``flip_masks``: an explicit fault pattern
    instead of sampling, int32 ``[B, H, T, D]`` whose ``[b, h, t, j]`` is XORed into word j of that
    token row (entries past the row's word count are ignored; ber and seed are then unused).
    ``stats_out``: an int64 ``[4]`` tensor on x's device; the counters (in STAT_KEYS order) are added to
    it instead of being returned, so a forward pass over many layers needs no host sync per call (the
    returned dict is then empty).
    """
    check_backend(backend)
    cache_mode = get_mode(mode) if isinstance(mode, str) else mode
    if not isinstance(cache_mode, CacheMode):
        raise TypeError(f"mode must be a CacheMode or a mode name, got {type(mode).__name__}")
    validate_fault_args(8, ber, seed, error_model, burst_len)
    _check_args(x, sink_tokens, window, flip_masks)
    g = resolve_group_size(x.shape[-1], group_size)
    word_kinds(cache_mode)
    if stats_out is not None and (stats_out.shape != (4,) or stats_out.dtype != torch.int64
                                  or stats_out.device != x.device):
        raise ValueError(f"stats_out must be an int64 [4] tensor on {x.device}, got {stats_out.dtype} "
                         f"{tuple(stats_out.shape)} on {stats_out.device}")
    if x.numel() == 0:
        return x.clone(), ({} if stats_out is not None else dict.fromkeys(STAT_KEYS, 0))
    if backend == "triton":
        from kernels.kv_roundtrip import roundtrip_triton

        kind, sink_kind = word_kinds(cache_mode)
        out, counts = roundtrip_triton(
            x, kind, sink_kind, float(ber), seed, error_model, burst_len, sink_tokens, g, scale_faults,
            cache_mode.interpolate, window, flip_masks, stats_out=stats_out,
        )
        if stats_out is not None:
            return out, {}
        return out, dict(zip(STAT_KEYS, (int(v) for v in counts.tolist()), strict=True))
    out, stats = _roundtrip_torch(
        x, cache_mode, float(ber), seed, error_model, burst_len, sink_tokens, g, scale_faults, window, flip_masks
    )
    if stats_out is not None:
        stats_out += torch.tensor([stats[k] for k in STAT_KEYS], dtype=torch.int64, device=x.device)
        return out, {}
    return out, stats
