"""Quality metrics of a language model under KV-cache faults, per sample, plus confidence intervals.

Every metric compares next-token predictions at positions ``0 .. L-2`` with the true tokens
``1 .. L-1`` of each sample (the first token has no prediction):

- NLL and perplexity: ``ppl = exp(mean token NLL)`` per sample (nats).
- KL from clean: ``mean_t KL(p_clean(.|t) || p_test(.|t))`` in nats per token, the clean
  distribution being the fp16 (no quantization, no faults) model on the same sample.
- top-5 accuracy: fraction of positions whose true next token is among the 5 most likely.
- catastrophic failure: a sample whose perplexity is non-finite or above
  ``CATASTROPHIC_MULTIPLE`` (10) times the clean perplexity of the same sample. Ten times is
  far beyond what INT4 rounding costs (a few percent) and what a corrected single-bit error
  costs, so a sample crosses it only when faults reached the model unrepaired.

Intervals: ``mean_ci`` gives a Student-t 95% interval of a mean; ``wilson_ci`` a Wilson score
interval of a proportion (well-behaved at 0 and 1, where the t interval collapses).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

CATASTROPHIC_MULTIPLE = 10.0
TOPK = 5

# Two-sided 97.5% quantiles of Student's t for 1..30 degrees of freedom.
_T975 = [
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
]  # fmt: skip
_Z975 = 1.959964


def _check_pair(logits: torch.Tensor, ids: torch.Tensor) -> None:
    if logits.dim() != 3 or ids.dim() != 2 or logits.shape[:2] != ids.shape:
        raise ValueError(f"logits must be [N, L, V] and ids [N, L]; got {tuple(logits.shape)} and {tuple(ids.shape)}")
    if ids.shape[1] < 2:
        raise ValueError(f"samples need at least 2 tokens, got L={ids.shape[1]}")


def token_nll(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Per-token negative log-likelihood of the true next token: ``[N, L-1]`` fp32 (nats)."""
    _check_pair(logits, ids)
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # [N, L-1, V]
    return -logp.gather(-1, ids[:, 1:, None].to(logits.device)).squeeze(-1)


def perplexity(nll: torch.Tensor) -> torch.Tensor:
    """Per-sample perplexity ``exp(mean NLL)`` from token NLLs ``[N, T]``: ``[N]``."""
    return torch.exp(nll.mean(dim=-1))


def kl_from_clean(logits: torch.Tensor, clean_logits: torch.Tensor) -> torch.Tensor:
    """Per-sample mean ``KL(clean || test)`` over the predicting positions, nats per token: ``[N]``."""
    if logits.shape != clean_logits.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and clean_logits {tuple(clean_logits.shape)} differ in shape")
    logq = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # [N, L-1, V] test
    logp = torch.log_softmax(clean_logits[:, :-1].to(logits.device).float(), dim=-1)  # clean
    kl = (logp.exp() * (logp - logq)).sum(dim=-1)  # [N, L-1]
    return kl.clamp_min(0.0).mean(dim=-1)  # rounding can make a zero KL slightly negative


def topk_accuracy(logits: torch.Tensor, ids: torch.Tensor, k: int = TOPK) -> torch.Tensor:
    """Per-sample fraction of positions whose true next token is in the top ``k``: ``[N]``."""
    _check_pair(logits, ids)
    top = logits[:, :-1].topk(k, dim=-1).indices  # [N, L-1, k]
    hit = (top == ids[:, 1:, None].to(logits.device)).any(dim=-1)
    return hit.float().mean(dim=-1)


def catastrophic(ppl: torch.Tensor, clean_ppl: torch.Tensor, multiple: float = CATASTROPHIC_MULTIPLE) -> torch.Tensor:
    """Boolean ``[N]``: perplexity non-finite or above ``multiple`` x the same sample's clean perplexity."""
    if multiple <= 1:
        raise ValueError(f"catastrophic multiple must be > 1, got {multiple}")
    return ~torch.isfinite(ppl) | (ppl > multiple * clean_ppl.to(ppl.device))


def sample_metrics(
    logits: torch.Tensor, ids: torch.Tensor, clean_logits: torch.Tensor | None = None
) -> dict[str, list[float]]:
    """All per-sample metrics of a batch as plain lists (``nll``, ``ppl``, ``top5`` and ``kl`` if clean given)."""
    nll = token_nll(logits, ids)
    out = {
        "nll": nll.mean(dim=-1).tolist(),
        "ppl": perplexity(nll).tolist(),
        "top5": topk_accuracy(logits, ids).tolist(),
    }
    if clean_logits is not None:
        out["kl"] = kl_from_clean(logits, clean_logits).tolist()
    return out


def t_quantile_975(df: int) -> float:
    """The 97.5% quantile of Student's t with ``df`` degrees of freedom (table, then a series)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = _Z975  # Cornish-Fisher expansion, accurate to ~1e-4 beyond 30 df
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def mean_ci(values: Sequence[float]) -> tuple[float, float, float]:
    """``(mean, lo, hi)``: mean and Student-t 95% interval; non-finite values propagate as inf/nan."""
    xs = [float(v) for v in values]
    if not xs:
        raise ValueError("mean_ci needs at least one value")
    n = len(xs)
    mean = math.fsum(xs) / n
    if n == 1 or not math.isfinite(mean):
        return mean, mean, mean
    var = math.fsum((x - mean) ** 2 for x in xs) / (n - 1)
    half = t_quantile_975(n - 1) * math.sqrt(var / n)
    return mean, mean - half, mean + half


def wilson_ci(successes: int, n: int) -> tuple[float, float, float]:
    """``(rate, lo, hi)``: a proportion with its 95% Wilson score interval."""
    if n < 1 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n and n >= 1, got successes={successes}, n={n}")
    p = successes / n
    z2 = _Z975**2
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = _Z975 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return p, max(0.0, centre - half), min(1.0, centre + half)
