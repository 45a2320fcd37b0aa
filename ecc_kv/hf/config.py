"""``ECCShimConfig``: what the transformers drop-in does to a model's KV cache, and its counters.

The user-facing spelling (``codec="hamming84", use_interpolation=True, sink_blocks=1``) maps
onto one mode of the registry in ``ecc_kv.modes``, so the shim, the paged cache, the
evaluation tasks and the benchmarks agree on what a mode name means.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from ecc_kv.modes import MODES, get_mode

CODECS = ("none", "hamming74", "hamming84", "golay", "golay2412")
BACKENDS = ("auto", "torch", "triton")
ERROR_MODELS = ("bsc", "burst")
STAT_KEYS = ("bits_flipped", "corrected", "detected", "interpolated", "values")

# (codec, interpolate, adaptive) -> mode name
_CODEC_MODES = {
    (None, False, False): "int4",
    ("hamming74", False, False): "int4-hamming",
    ("hamming84", False, False): "int4-hamming84",
    ("hamming84", True, False): "int4-hamming84-interp",
    ("golay2412", False, False): "int12-golay",
    ("hamming84", False, True): "adaptive",
}


@dataclass(frozen=True)
class ECCShimConfig:
    """How every layer's K/V are stored: INT4 codes, an ECC, faults at ``ber``, read back.

    codec: "none" (plain INT4), "hamming74", "hamming84", "golay" / "golay2412".
    use_interpolation: replace values of detected-uncorrectable codewords by the mean of
        their token neighbours (needs a detecting code: hamming84).
    ber: bit error rate of the stored codeword bits (scales are stored apart, unfaulted).
    backend: "torch", "triton" or "auto" (triton on CUDA tensors, torch on CPU).
    sink_blocks: > 0 selects the adaptive mode: the first ``sink_blocks * block_size`` tokens
        (attention sinks) are Golay-protected, the rest Hamming(8,4).
    block_size: tokens per block of the paged cache (generation) and of the sink region.
    error_model / burst_len: "bsc" (independent bit flips) or "burst" (runs of ``burst_len``).
    seed: seeds the fault streams; every (forward call, layer, K/V) draws its own stream.
    mode: a mode name from ``ecc_kv.modes`` (e.g. "fp16", "int4-msb-secded"); overrides the
        codec spelling above when given.
    group_size: INT4 scale group along head_dim (None: one scale per token and head).
    fused_decode: on CUDA with the triton backend, decode steps of generation read the
        paged cache through the fused decode-attention kernel.
    max_cache_len: token capacity of the paged cache per sequence when ``generate`` does
        not say (the shim's generate wrapper sizes it from the prompt and max_new_tokens).
    """

    codec: str = "hamming84"
    use_interpolation: bool = False
    ber: float = 0.0
    backend: str = "auto"
    sink_blocks: int = 0
    block_size: int = 16
    error_model: str = "bsc"
    burst_len: int = 2
    seed: int = 0
    mode: str | None = None
    group_size: int | None = None
    fused_decode: bool = True
    max_cache_len: int = 4096

    def __post_init__(self) -> None:
        if self.mode is not None:
            get_mode(self.mode)  # the registry's error lists every mode
        if self.codec not in CODECS:
            raise ValueError(f"ECCShimConfig.codec={self.codec!r}; choose one of: {', '.join(CODECS)}")
        if self.backend not in BACKENDS:
            raise ValueError(f"ECCShimConfig.backend={self.backend!r}; choose one of: {', '.join(BACKENDS)}")
        if self.error_model not in ERROR_MODELS:
            raise ValueError(
                f"ECCShimConfig.error_model={self.error_model!r}; choose one of: {', '.join(ERROR_MODELS)}"
            )
        if isinstance(self.ber, bool) or not isinstance(self.ber, (int, float)) or not 0.0 <= self.ber <= 1.0:
            raise ValueError(f"ECCShimConfig.ber={self.ber!r} must be a number in [0, 1]")
        for key in ("sink_blocks", "seed"):
            val = getattr(self, key)
            if isinstance(val, bool) or not isinstance(val, int) or val < 0:
                raise ValueError(f"ECCShimConfig.{key}={val!r} must be an int >= 0")
        for key in ("block_size", "burst_len", "max_cache_len"):
            val = getattr(self, key)
            if isinstance(val, bool) or not isinstance(val, int) or val < 1:
                raise ValueError(f"ECCShimConfig.{key}={val!r} must be an int >= 1")
        self.mode_name  # noqa: B018 -- validates the codec / interpolation / sink combination

    @classmethod
    def from_mode(cls, mode: str, **kwargs: Any) -> ECCShimConfig:
        """A config for a registry mode name (sink_blocks defaults to 1 for "adaptive")."""
        get_mode(mode)
        if mode == "adaptive":
            kwargs.setdefault("sink_blocks", 1)
        return cls(mode=mode, **kwargs)

    @property
    def mode_name(self) -> str:
        """The ``ecc_kv.modes`` name this config stands for."""
        if self.mode is not None:
            if self.mode == "adaptive" and self.sink_blocks < 1:
                raise ValueError("ECCShimConfig(mode='adaptive') needs sink_blocks >= 1")
            return self.mode
        codec = {"none": None, "golay": "golay2412"}.get(self.codec, self.codec)
        key = (codec, bool(self.use_interpolation), self.sink_blocks > 0)
        if key not in _CODEC_MODES:
            valid = "; ".join(
                f"codec={c or 'none'!r}, use_interpolation={i}, sink_blocks{'>0' if a else '=0'}"
                for c, i, a in _CODEC_MODES
            )
            raise ValueError(
                f"ECCShimConfig(codec={self.codec!r}, use_interpolation={self.use_interpolation}, "
                f"sink_blocks={self.sink_blocks}) is not a cache mode; valid combinations: {valid}; "
                f"or pass mode= one of {', '.join(MODES)}"
            )
        return _CODEC_MODES[key]

    @property
    def sink_tokens(self) -> int:
        """Tokens at the start of each sequence stored with the sink codec (adaptive mode)."""
        return self.sink_blocks * self.block_size if self.mode_name == "adaptive" else 0

    def resolved_backend(self, device: Any) -> str:
        """``backend`` with "auto" resolved for tensors on ``device``."""
        if self.backend != "auto":
            return self.backend
        return "triton" if str(device).startswith("cuda") else "torch"

    def with_seed(self, seed: int) -> ECCShimConfig:
        return replace(self, seed=seed)


def mix_seed(*parts: int) -> int:
    """Combine integers into one 63-bit seed (splitmix-style), so sub-streams do not collide."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h ^= int(p) + 0x9E3779B97F4A7C15 + ((h << 6) & (2**64 - 1)) + (h >> 2)
        h = (h * 0xBF58476D1CE4E5B9) & (2**64 - 1)
        h ^= h >> 31
    return h % 2**63


@dataclass
class ECCStats:
    """Counters per layer (plain ints): bits flipped, codewords corrected / detected, values interpolated."""

    per_layer: dict[int, dict[str, int]] = field(default_factory=dict)

    def add(self, layer: int, counts: dict[str, Any]) -> None:
        row = self.per_layer.setdefault(int(layer), dict.fromkeys(STAT_KEYS, 0))
        for key in STAT_KEYS:
            if key in counts:
                row[key] += int(counts[key])

    def as_dict(self) -> dict[str, Any]:
        """``{"total": {...}, "per_layer": {layer: {...}}}`` with int counts."""
        total = dict.fromkeys(STAT_KEYS, 0)
        for row in self.per_layer.values():
            for key in STAT_KEYS:
                total[key] += row[key]
        return {"total": total, "per_layer": {k: dict(v) for k, v in sorted(self.per_layer.items())}}

    def reset(self) -> None:
        self.per_layer.clear()
