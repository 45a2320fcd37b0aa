"""KV-cache protection modes by name: what each stores and how it is read back.

One registry shared by the transformers integration, the paged cache, the evaluation
tasks and the benchmarks, so a mode name means the same thing everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

CODEC_ALIASES = {"golay": "golay2412", "hamming": "hamming74", "none": None}


@dataclass(frozen=True)
class CacheMode:
    """A KV-cache storage mode.

    quantized: INT4 codes (symmetric, per token per head) instead of fp16 values.
    codec: the ECC applied to every INT4 code (None: raw INT4).
    interpolate: replace values of detected-uncorrectable codewords from neighbouring tokens.
    sink_codec: a stronger codec for the first ``sink_tokens`` tokens (attention sinks).
    msb_only: protect only the two high-order bits of each INT4 value (sign + MSB) with
        ``codec``, store the two low bits raw (bit-significance-aware protection).
    """

    name: str
    quantized: bool = True
    codec: str | None = None
    interpolate: bool = False
    sink_codec: str | None = None
    msb_only: bool = False

    @property
    def bits_per_value(self) -> float:
        """Stored bits per K/V value, excluding the per-token fp16 scales."""
        if not self.quantized:
            return 16.0
        if self.codec is None:
            return 4.0
        rate = {"hamming74": 7 / 4, "hamming84": 8 / 4, "golay2412": 24 / 12}[self.codec]
        if self.msb_only:
            return 2.0 + 2.0 * rate
        return 4.0 * rate


MODES: dict[str, CacheMode] = {
    m.name: m
    for m in [
        CacheMode("fp16", quantized=False),
        CacheMode("int4"),
        CacheMode("int4-hamming", codec="hamming74"),
        CacheMode("int4-hamming84", codec="hamming84"),
        CacheMode("int4-hamming84-interp", codec="hamming84", interpolate=True),
        CacheMode("int12-golay", codec="golay2412"),
        CacheMode("adaptive", codec="hamming84", sink_codec="golay2412"),
        CacheMode("int4-msb-secded", codec="hamming84", msb_only=True),
    ]
}


def get_mode(name: str) -> CacheMode:
    """The mode called ``name``; a ``ValueError`` lists the modes that exist."""
    try:
        return MODES[name]
    except KeyError:
        raise ValueError(f"unknown cache mode {name!r}; choose one of: {', '.join(MODES)}") from None


def canonical_codec(name: str | None) -> str | None:
    """Map user spellings ("golay", "none", "hamming") to codec registry names."""
    if name is None:
        return None
    return CODEC_ALIASES.get(name, name)
