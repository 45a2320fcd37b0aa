"""The quantized-KV cache modes of the QAQ study, and how a transformers model runs through them.

Modes (``KVQuantConfig.from_mode``): ``fp16``; ``int1`` .. ``int8`` (uniform, any width, with
``group_size``, ``scheme`` and ``outliers``); ``kivi2`` / ``kivi4`` (``ecc_kv.kivi``); ``qaq``
(``ecc_kv.qaq``). Every quantized mode stores real packed bytes (``ecc_kv.bitpack``); under
bit errors the packed code bytes go through ``ecc_kv.faults.inject``, optionally protected
by an ECC codec (``ecc_kv.codecs``) applied to them as 4-bit symbols (low nibble first).

Integration: an attention function registered with transformers' ``AttentionInterface``
(name ``ecc_kv_quant``) that, in every layer, replaces K and V by their
quantize -> pack -> (fault) -> unpack -> dequantize round trip before SDPA, with the layer's
queries at hand (QAQ needs them). ``quantized_kv(model, cfg)`` switches a model to it. For
generation, ``ecc_kv.kv_quant_cache.QuantKVCache`` stores the tokens as they arrive (real
packed chunks, faults persistent) and this function completes each of its writes.
In ``capture`` mode the layer attends with the exact K/V (a prefill whose own logits are
clean) and keeps the round-tripped K/V, which ``write_captured(cache)`` then puts into the
``DynamicCache``: the "question cache quantized" setting of the multiple-choice evaluation.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from ecc_kv.bitpack import PackedTensor, byte_report, quantize_pack, replace_data, unpack_dequantize
from ecc_kv.kivi import KiviLayer
from ecc_kv.qaq import QAQConfig, qaq_pack
from ecc_kv.uniform_quant import check_scheme

ATTN_NAME = "ecc_kv_quant"
FIXED_MODES = ("fp16", *(f"int{b}" for b in range(1, 9)), "kivi2", "kivi4", "qaq")
ERROR_MODELS = ("bsc", "burst")


@dataclass(frozen=True)
class KVQuantConfig:
    """How K and V are stored: method, widths, grid, outliers, protection and faults."""

    mode: str = "int4"
    group_size: int | None = None
    scheme: str = "minmax"
    outliers: float = 0.0
    kivi_group: int = 32
    kivi_residual: int = 32
    qaq: QAQConfig = field(default_factory=QAQConfig)
    codec: str | None = None
    ber: float = 0.0
    error_model: str = "bsc"
    burst_len: int = 2
    seed: int = 0
    backend: str = "torch"
    attn_rows: int = 16
    requant_every: int = 0  # QAQ generation (QuantKVCache): re-allocate all bits every this many steps

    def __post_init__(self) -> None:
        if self.mode not in FIXED_MODES:
            raise ValueError(f"mode={self.mode!r} is not one of {', '.join(FIXED_MODES)}")
        check_scheme(self.scheme)
        if self.error_model not in ERROR_MODELS:
            raise ValueError(f"error_model={self.error_model!r} is not one of {ERROR_MODELS}")
        if not isinstance(self.ber, (int, float)) or not 0.0 <= self.ber <= 0.5:
            raise ValueError(f"ber={self.ber!r} must be a number in [0, 0.5]")
        if isinstance(self.requant_every, bool) or not isinstance(self.requant_every, int) or self.requant_every < 0:
            raise ValueError(f"requant_every={self.requant_every!r} must be an int >= 0")
        if self.codec is not None:
            from ecc_kv.codecs import canonical_name

            object.__setattr__(self, "codec", canonical_name(self.codec))

    @property
    def method(self) -> str:
        if self.mode == "fp16":
            return "fp16"
        if self.mode.startswith("int"):
            return "uniform"
        return "kivi" if self.mode.startswith("kivi") else "qaq"

    @property
    def bits(self) -> int:
        return int(self.mode[3:]) if self.method == "uniform" else int(self.mode[4:]) if self.method == "kivi" else 0


# ----------------------------------------------------------------------------- faults and ECC


def _codec_rate(codec: str | None) -> float:
    return {None: 1.0, "hamming74": 7 / 4, "hamming84": 2.0, "golay2412": 2.0}[codec]


def corrupt_packed(p: PackedTensor, cfg: KVQuantConfig, seed: int) -> tuple[PackedTensor, dict[str, int]]:
    """Inject bit errors into the packed code bytes (through the ECC when ``cfg.codec`` is set)."""
    counts = {"flips": 0, "corrected": 0, "detected": 0}
    if cfg.ber <= 0 or p.data.numel() == 0:
        return p, counts
    from ecc_kv.faults import inject

    kw = {"model": cfg.error_model, "burst_len": cfg.burst_len, "backend": cfg.backend}
    if cfg.codec is None:
        data, n = inject(p.data, 8, cfg.ber, seed, **kw)
        counts["flips"] = int(n)
        return replace_data(p, data.to(torch.uint8)), counts
    from ecc_kv.codecs import get_codec

    codec = get_codec(cfg.codec, backend=cfg.backend)
    nib = torch.stack([p.data & 15, p.data >> 4], dim=-1).reshape(-1)  # [2n] 4-bit symbols, low first
    pad = (-nib.numel()) % codec.data_symbols
    if pad:
        nib = torch.cat([nib, nib.new_zeros(pad)])
    cw = codec.encode(nib)
    cw_bad, n = inject(cw, codec.codeword_bits, cfg.ber, seed, **kw)
    nib2, status = codec.decode(cw_bad)
    counts["flips"] = int(n)
    counts["corrected"] = int((status == 1).sum())
    counts["detected"] = int((status == 2).sum())
    nib2 = nib2.reshape(-1)[: 2 * p.data.numel()].to(torch.uint8).reshape(-1, 2)
    return replace_data(p, (nib2[:, 0] & 15) | ((nib2[:, 1] & 15) << 4)), counts


# ----------------------------------------------------------------------------- per-layer round trip


@dataclass
class KVStats:
    """Sums over layers and calls, turned into the task's summary numbers."""

    sums: dict[str, float] = field(default_factory=dict)

    def add(self, key: str, val: float) -> None:
        self.sums[key] = self.sums.get(key, 0.0) + float(val)

    def add_packed(self, name: str, parts: list[PackedTensor], fp16_numel: int, codec: str | None) -> None:
        """Account the real and ideal bytes of K or V (``name``) stored as ``parts`` plus fp16 values."""
        rate = _codec_rate(codec)
        real = 2.0 * fp16_numel
        ideal_bits = 16.0 * fp16_numel
        n = fp16_numel
        for p in parts:
            rep = byte_report(p)
            real += rep["bytes_real"] + (rate - 1.0) * rep["bytes_codes"]
            ideal_bits += rep["avg_bits"] * p.numel()
            n += p.numel()
        self.add(f"{name}_bytes_real", real)
        self.add(f"{name}_bits_ideal", ideal_bits)
        self.add(f"{name}_numel", n)

    def finish(self) -> dict[str, float]:
        """Averages: bits, bytes per value, compression ratios, MSE, attention error, fault counts."""
        s = self.sums
        out: dict[str, float] = {}
        for name in ("k", "v"):
            n = max(s.get(f"{name}_numel", 0.0), 1.0)
            out[f"avg_bits_{name}"] = s.get(f"{name}_bits_ideal", 0.0) / n
            out[f"bits_real_{name}"] = 8.0 * s.get(f"{name}_bytes_real", 0.0) / n
            out[f"ratio_ideal_{name}"] = 16.0 / max(out[f"avg_bits_{name}"], 1e-9)
            out[f"ratio_real_{name}"] = 16.0 / max(out[f"bits_real_{name}"], 1e-9)
            out[f"mse_{name}"] = s.get(f"{name}_sq_err", 0.0) / n
        n_kv = max(s.get("k_numel", 0.0) + s.get("v_numel", 0.0), 1.0)
        out["avg_bits"] = (s.get("k_bits_ideal", 0.0) + s.get("v_bits_ideal", 0.0)) / n_kv
        out["bits_real"] = 8.0 * (s.get("k_bytes_real", 0.0) + s.get("v_bytes_real", 0.0)) / n_kv
        out["ratio_ideal"] = 16.0 / max(out["avg_bits"], 1e-9)
        out["ratio_real"] = 16.0 / max(out["bits_real"], 1e-9)
        out["attn_tv"] = s.get("attn_tv", 0.0) / max(s.get("attn_rows", 0.0), 1.0)
        for key in ("flips", "corrected", "detected"):
            out[key] = s.get(key, 0.0)
        return out


def attention_tv(q: torch.Tensor, k: torch.Tensor, k_hat: torch.Tensor, scaling: float, rows: int) -> tuple[float, int]:
    """Sum of total-variation distances between the causal attention rows of the last ``rows`` queries with k and k_hat."""
    b, hq, t, _ = q.shape
    hkv = k.shape[1]
    n = min(rows, t)
    qs = q[:, :, t - n:, :].to(torch.float32)  # [B, Hq, n, D]
    mask = torch.arange(t, device=q.device)[None, :] > torch.arange(t - n, t, device=q.device)[:, None]

    def probs(kk: torch.Tensor) -> torch.Tensor:
        kr = kk.to(torch.float32).repeat_interleave(hq // hkv, dim=1)
        return torch.softmax((qs @ kr.transpose(-1, -2) * scaling).masked_fill(mask, float("-inf")), dim=-1)

    tv = 0.5 * (probs(k) - probs(k_hat)).abs().sum(-1)  # [B, Hq, n]
    return float(tv.sum()), tv.numel()


def roundtrip_layer(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scaling: float, cfg: KVQuantConfig, stats: KVStats, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """K, V [B, Hkv, T, D] -> what the cache gives back under ``cfg``; accounts storage, error, faults."""
    if cfg.method == "fp16":
        stats.add_packed("k", [], k.numel(), None)
        stats.add_packed("v", [], v.numel(), None)
        return k, v
    dt = k.dtype
    if cfg.method == "kivi":
        layer = KiviLayer(cfg.bits, cfg.kivi_group, cfg.kivi_residual, cfg.backend)
        layer.append(k, v)
        kc, vc = [], []
        for i, p in enumerate(layer.k_chunks):
            p2, c = corrupt_packed(p, cfg, seed + 7919 * i)
            kc.append(p2)
            _add_counts(stats, c)
        for i, p in enumerate(layer.v_chunks):
            p2, c = corrupt_packed(p, cfg, seed + 7919 * i + 1)
            vc.append(p2)
            _add_counts(stats, c)
        stats.add_packed("k", layer.k_chunks, layer.k_res.numel(), cfg.codec)
        stats.add_packed("v", layer.v_chunks, layer.v_res.numel(), cfg.codec)
        layer.k_chunks, layer.v_chunks = kc, vc
        k_hat, v_hat = layer.keys_values(dt)
    else:
        if cfg.method == "uniform":
            pk = quantize_pack(k, cfg.bits, cfg.group_size, cfg.scheme, cfg.outliers, backend=cfg.backend)
            pv = quantize_pack(v, cfg.bits, cfg.group_size, cfg.scheme, cfg.outliers, backend=cfg.backend)
        else:
            pk, pv = qaq_pack(q, k, v, scaling, cfg.qaq, backend=cfg.backend)
        stats.add_packed("k", [pk], 0, cfg.codec)
        stats.add_packed("v", [pv], 0, cfg.codec)
        pk, ck = corrupt_packed(pk, cfg, seed)
        pv, cv = corrupt_packed(pv, cfg, seed + 1)
        _add_counts(stats, ck)
        _add_counts(stats, cv)
        k_hat, v_hat = unpack_dequantize(pk, dt, cfg.backend), unpack_dequantize(pv, dt, cfg.backend)
    stats.add("k_sq_err", float(((k_hat.float() - k.float()) ** 2).sum()))
    stats.add("v_sq_err", float(((v_hat.float() - v.float()) ** 2).sum()))
    tv, rows = attention_tv(q, k, k_hat, scaling, cfg.attn_rows)
    stats.add("attn_tv", tv)
    stats.add("attn_rows", rows)
    return k_hat, v_hat


def _add_counts(stats: KVStats, counts: dict[str, int]) -> None:
    for key, val in counts.items():
        stats.add(key, val)


# ----------------------------------------------------------------------------- transformers hook


@dataclass
class _HookState:
    cfg: KVQuantConfig
    stats: KVStats
    capture: bool = False
    calls: int = 0
    captured: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)


_STATE: list[_HookState] = []


def _kvq_attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                   attention_mask: torch.Tensor | None, **kwargs: Any) -> tuple[torch.Tensor, Any]:
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from ecc_kv.kv_quant_cache import PENDING

    layer = int(getattr(module, "layer_idx", 0) or 0)
    scaling = kwargs.get("scaling") or getattr(module, "scaling", None) or query.shape[-1] ** -0.5
    pending = PENDING.pop(layer, None)
    if pending is not None and pending[0] is key:  # generation with a QuantKVCache: finish its write
        key, value = pending[1].append(query, key, value, float(scaling))
    elif _STATE:
        st = _STATE[-1]
        seed = st.cfg.seed * 1_000_003 + st.calls * 1009 + 2 * layer
        st.calls += 1
        k_hat, v_hat = roundtrip_layer(query, key, value, float(scaling), st.cfg, st.stats, seed)
        if st.capture:
            st.captured[layer] = (k_hat, v_hat)
        else:
            key, value = k_hat, v_hat
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def register() -> str:
    """Register the attention function (and its SDPA mask) with transformers; returns its name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTN_NAME, _kvq_attention)
    AttentionMaskInterface.register(ATTN_NAME, sdpa_mask)
    return ATTN_NAME


@contextlib.contextmanager
def quantized_kv(model: Any, cfg: KVQuantConfig, stats: KVStats | None = None, capture: bool = False) -> Iterator[_HookState]:
    """Run ``model`` with every layer's K/V through ``cfg``'s cache (restores attention on exit)."""
    register()
    prev = model.config._attn_implementation
    model.set_attn_implementation(ATTN_NAME)
    st = _HookState(cfg, stats if stats is not None else KVStats(), capture)
    _STATE.append(st)
    try:
        yield st
    finally:
        _STATE.pop()
        model.set_attn_implementation(prev)


def write_captured(cache: Any, st: _HookState) -> None:
    """Replace the K/V a ``DynamicCache`` holds by the captured round-tripped ones."""
    for i, layer in enumerate(cache.layers):
        if i in st.captured:
            layer.keys, layer.values = st.captured[i]


def with_seed(cfg: KVQuantConfig, seed: int) -> KVQuantConfig:
    return replace(cfg, seed=seed)


def qaq_from_params(params: dict[str, Any]) -> QAQConfig:
    """The QAQ config a task's parameters describe."""
    return QAQConfig(
        error_k=float(params.get("qaq_error_k", 0.01)), error_v=float(params.get("qaq_error_v", 0.01)),
        window=int(params.get("qaq_window", 5)), bits_min=int(params.get("qaq_bits_min", 1)),
        bits_max=int(params.get("qaq_bits_max", 8)), q_quantile=float(params.get("qaq_q_quantile", 0.9)),
        outliers=float(params.get("outliers", 0.0)), group_size=params.get("group_size"),
        variant=str(params.get("qaq_variant", "paper")),
    )
