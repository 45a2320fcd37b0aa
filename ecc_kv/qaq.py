"""QAQ (Dong et al., 2024): per-token bit widths for keys and values from error bounds.

Bit allocation (per token per KV head, separately for K and V), ``variant="paper"``:

- values: ``sigma_t <= sigma_X / (sqrt(T) * S_t)``, where ``S_t`` is token ``t``'s predicted
  attention: the maximum of the attention probabilities it received from the last ``n``
  queries (``window``), over the query heads that share its KV head (GQA);
- keys: ``sigma^2 <= ln(T^3 / (T - 1) * sigma_S^2 + 1) / ||q||^2``, with ``||q||^2`` the
  ``q_quantile`` (0.9) quantile of the layer's squared query norms (queries scaled by the
  attention's ``scaling``, so that ``q . k`` is the logit);
- ``B = ceil(log2(range / (2 sqrt(3) sigma)))`` clamped to ``[bits_min, bits_max]``; ``range``
  is the token's max - min over head_dim (outliers excluded; the largest group range when
  grouped); min-max quantization at ``B`` bits.

``variant="code"`` follows the authors' released code instead: the allowed error ``e`` is a
maximum error, ``B = ceil(log2(range / (2 e) + 1))``; values ``e_t = sqrt(sigma_X^2) / T / S_t``;
keys ``e_t = sqrt(sigma_S^2 / D) / T / (|q|_max * x_t)`` with ``x_t = max_j |delta_tj S_t - S_t S_j|``
(the softmax Jacobian row), ``|q|_max`` the same quantile of query norms; and the grid has its
zero point at the group mean (``scheme="mean"``, step ``range / 2^B``).

In both, the ``window - 1`` newest tokens have no full window of later queries and get
``bits_max``. Attention probabilities are recomputed here from the layer's queries and keys
(causal softmax of the last ``window`` query rows), so no eager attention is needed.
``QAQLayer`` is the decoding-time cache: tokens get their bits as they arrive and, with
``requant_every``, all tokens are re-allocated from an exact fp16 copy kept on the CPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ecc_kv.bitpack import PackedTensor, quantize_pack, unpack_dequantize
from ecc_kv.uniform_quant import outliers_per_tail, select_outliers

VARIANTS = ("paper", "code")


@dataclass(frozen=True)
class QAQConfig:
    """QAQ parameters: error targets for keys (sigma_S, on attention scores) and values (sigma_X)."""

    error_k: float = 0.01
    error_v: float = 0.01
    window: int = 5
    bits_min: int = 1
    bits_max: int = 8
    q_quantile: float = 0.9
    outliers: float = 0.0
    group_size: int | None = None
    variant: str = "paper"

    def __post_init__(self) -> None:
        for name in ("error_k", "error_v"):
            val = getattr(self, name)
            if not isinstance(val, (int, float)) or isinstance(val, bool) or not val > 0:
                raise ValueError(f"qaq {name}={val!r} must be a positive number")
        if not isinstance(self.window, int) or self.window < 1:
            raise ValueError(f"qaq window={self.window!r} must be an int >= 1")
        if not (1 <= self.bits_min <= self.bits_max <= 8):
            raise ValueError(f"qaq bits_min={self.bits_min}, bits_max={self.bits_max} must satisfy 1 <= min <= max <= 8")
        if not 0.0 < self.q_quantile <= 1.0:
            raise ValueError(f"qaq q_quantile={self.q_quantile} must be in (0, 1]")
        if self.variant not in VARIANTS:
            raise ValueError(f"qaq variant={self.variant!r} is not one of {VARIANTS}")

    @property
    def scheme(self) -> str:
        return "minmax" if self.variant == "paper" else "mean"


def last_query_attention(q: torch.Tensor, k: torch.Tensor, scaling: float, window: int) -> torch.Tensor:
    """S [B, Hkv, T]: max attention probability each key got from the last ``window`` queries.

    q: [B, Hq, Tq, D], the roped queries of the last ``Tq <= T`` positions (all T in a prefill);
    k: [B, Hkv, T, D]. Causal softmax in fp32; maximum over the window's rows and over the
    query heads sharing each KV head (GQA).
    """
    b, hq, tq, _ = q.shape
    hkv, t = k.shape[1], k.shape[2]
    n = min(window, tq, t)
    qs = q[:, :, tq - n:, :].to(torch.float32)  # [B, Hq, n, D]
    kk = k.to(torch.float32).repeat_interleave(hq // hkv, dim=1)  # [B, Hq, T, D]
    logits = torch.matmul(qs, kk.transpose(-1, -2)) * scaling  # [B, Hq, n, T]
    rows = torch.arange(t - n, t, device=q.device)[:, None]
    logits = logits.masked_fill(torch.arange(t, device=q.device)[None, :] > rows, float("-inf"))
    probs = torch.softmax(logits, dim=-1).amax(dim=2)  # [B, Hq, T]
    return probs.reshape(b, hkv, hq // hkv, t).amax(dim=2)  # [B, Hkv, T]


def token_ranges(x: torch.Tensor, cfg: QAQConfig) -> torch.Tensor:
    """range [B, H, T] = max - min of each token's values (outliers excluded; max over groups)."""
    d = x.shape[-1]
    g = cfg.group_size or d
    xg = x.reshape(-1, g).to(torch.float32)  # [M, G]
    k = outliers_per_tail(cfg.outliers, g)
    _, taken = select_outliers(xg, k)
    rng = torch.where(taken, float("-inf"), xg).amax(1) - torch.where(taken, float("inf"), xg).amin(1)
    return rng.reshape(*x.shape[:-1], d // g).amax(-1)


def query_norm_quantile(q: torch.Tensor, scaling: float, quantile: float) -> float:
    """The ``quantile`` of squared norms of the scaled queries [B, Hq, T, D] (one number per layer)."""
    sq = ((q.to(torch.float32) * scaling) ** 2).sum(-1).reshape(-1)
    return float(torch.quantile(sq[: 1 << 24], quantile))


def _to_bits(ratio: torch.Tensor, cfg: QAQConfig, plus_one: bool) -> torch.Tensor:
    # ratio = range / step ; bits = ceil(log2(ratio (+1)))
    r = ratio + 1.0 if plus_one else ratio
    bits = torch.ceil(torch.log2(r.clamp(min=1e-30)))
    bits = torch.nan_to_num(bits, nan=float(cfg.bits_max), posinf=float(cfg.bits_max), neginf=float(cfg.bits_min))
    return bits.clamp(cfg.bits_min, cfg.bits_max).to(torch.int64)


def allocate_bits(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scaling: float, cfg: QAQConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token widths (bits_k, bits_v), int64 [B, Hkv, T] each, for one layer's q [B,Hq,T,D], k, v."""
    t, d = k.shape[-2], k.shape[-1]
    s = last_query_attention(q, k, scaling, cfg.window)  # [B, Hkv, T]
    q2 = query_norm_quantile(q, scaling, cfg.q_quantile)
    rv = token_ranges(v, cfg)
    s_safe = s.clamp(min=1e-30)
    if cfg.variant == "paper":
        sig_v = cfg.error_v / (math.sqrt(t) * s_safe)  # [B, Hkv, T]
        bits_k = key_bits_paper(k, q2, t, cfg)
        bits_v = _to_bits(rv / (2 * math.sqrt(3) * sig_v), cfg, plus_one=False)
    else:
        top2 = s.topk(min(2, t), dim=-1).values  # [B, Hkv, 2]
        other = torch.where(s >= top2[..., :1], top2[..., -1:], top2[..., :1])  # max_{j != t} S_j
        x = torch.maximum((s - s * s).abs(), s * other).clamp(min=1e-30)
        rk = token_ranges(k, cfg)
        e_k = math.sqrt(cfg.error_k**2 / d) / t / (math.sqrt(max(q2, 1e-30)) * x)
        e_v = cfg.error_v / t / s_safe
        bits_k = _to_bits(rk / (2 * e_k), cfg, plus_one=True)
        bits_v = _to_bits(rv / (2 * e_v), cfg, plus_one=True)
    if cfg.window > 1:
        newest = min(cfg.window - 1, t)
        bits_v[..., t - newest:] = cfg.bits_max
        if cfg.variant == "code":  # the code's key bound uses attention too
            bits_k[..., t - newest:] = cfg.bits_max
    return bits_k, bits_v


def key_bits_paper(k: torch.Tensor, q2: float, t: int, cfg: QAQConfig) -> torch.Tensor:
    """Paper key widths [B, H, t_new] for new keys k when the cache holds ``t`` tokens."""
    tt = float(max(t, 2))
    sig_k = math.sqrt(math.log(tt**3 / (tt - 1.0) * cfg.error_k**2 + 1.0) / max(q2, 1e-30))
    return _to_bits(token_ranges(k, cfg) / (2 * math.sqrt(3) * sig_k), cfg, plus_one=False)


def qaq_pack(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scaling: float, cfg: QAQConfig, backend: str = "torch"
) -> tuple[PackedTensor, PackedTensor]:
    """Allocate bits and pack one layer's K and V (always with stored per-token widths)."""
    bits_k, bits_v = allocate_bits(q, k, v, scaling, cfg)
    pk = quantize_pack(k, bits_k, cfg.group_size, cfg.scheme, cfg.outliers, adaptive=True, backend=backend)
    pv = quantize_pack(v, bits_v, cfg.group_size, cfg.scheme, cfg.outliers, adaptive=True, backend=backend)
    return pk, pv


@dataclass
class QAQLayer:
    """Decoding-time QAQ cache of one layer.

    ``append(q, k, v)`` adds tokens. A token's key bits follow from the key bound at once;
    its value bits need ``window`` later queries, so it stays at ``bits_max`` until then
    (that is what the prefill allocation gives the newest tokens too). With
    ``requant_every > 0`` every that many appended steps all tokens are re-allocated and
    re-packed from the exact fp16 copy held on the CPU (``exact_k``/``exact_v``) and the last
    ``window`` queries; without it, bits are fixed when a token is packed.
    """

    cfg: QAQConfig
    scaling: float
    requant_every: int = 0
    backend: str = "torch"
    chunks: list[tuple[PackedTensor, PackedTensor]] = field(default_factory=list)
    exact_k: torch.Tensor | None = None  # [B, Hkv, T, D] on CPU (only with requant_every)
    exact_v: torch.Tensor | None = None
    recent_q: torch.Tensor | None = None  # [B, Hq, <=window, D]
    steps: int = 0

    def append(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Add tokens: q [B, Hq, t, D], k, v [B, Hkv, t, D]."""
        rq = q if self.recent_q is None else torch.cat([self.recent_q, q], dim=-2)
        self.recent_q = rq[..., -self.cfg.window:, :]
        if self.requant_every:
            kc, vc = k.detach().to("cpu"), v.detach().to("cpu")
            self.exact_k = kc if self.exact_k is None else torch.cat([self.exact_k, kc], dim=-2)
            self.exact_v = vc if self.exact_v is None else torch.cat([self.exact_v, vc], dim=-2)
        first = not self.chunks
        self.steps += 0 if first else 1
        if first:
            self.chunks.append(qaq_pack(q, k, v, self.scaling, self.cfg, self.backend))
        else:
            self.chunks.append(self._pack_new(k, v))
        if self.requant_every and not first and self.steps % self.requant_every == 0:
            self.requantize()

    def _pack_new(self, k: torch.Tensor, v: torch.Tensor) -> tuple[PackedTensor, PackedTensor]:
        # new tokens: key widths from the paper's key bound at once (it needs no attention);
        # values (and keys in the code variant) wait at bits_max for their window
        cfg = self.cfg
        full = torch.full(v.shape[:-1], cfg.bits_max, dtype=torch.int64, device=v.device)
        if cfg.variant == "paper":
            q2 = query_norm_quantile(self.recent_q, self.scaling, cfg.q_quantile)
            bits_k = key_bits_paper(k, q2, self.seq_len() + k.shape[-2], cfg)
        else:
            bits_k = full
        pk = quantize_pack(k, bits_k, cfg.group_size, cfg.scheme, cfg.outliers, adaptive=True, backend=self.backend)
        pv = quantize_pack(v, full, cfg.group_size, cfg.scheme, cfg.outliers, adaptive=True, backend=self.backend)
        return pk, pv

    def requantize(self) -> None:
        """Re-allocate every token's bits from the exact copy and the last ``window`` queries.

        The query-norm quantile is then taken over those recent queries only.
        """
        if self.exact_k is None:
            raise ValueError("requantize needs requant_every > 0 (no exact copy is kept otherwise)")
        dev = self.recent_q.device
        k, v = self.exact_k.to(dev), self.exact_v.to(dev)
        self.chunks = [qaq_pack(self.recent_q, k, v, self.scaling, self.cfg, self.backend)]

    def seq_len(self) -> int:
        return sum(pk.shape[-2] for pk, _ in self.chunks)

    def keys_values(self, dtype: torch.dtype = torch.float16) -> tuple[torch.Tensor, torch.Tensor]:
        """Dequantized K, V [B, Hkv, T, D] as the attention reads them."""
        ks = [unpack_dequantize(pk, dtype, self.backend) for pk, _ in self.chunks]
        vs = [unpack_dequantize(pv, dtype, self.backend) for _, pv in self.chunks]
        return torch.cat(ks, dim=-2), torch.cat(vs, dim=-2)
