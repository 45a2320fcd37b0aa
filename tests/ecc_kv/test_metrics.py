"""ecc_kv.metrics against torch's own losses and textbook values."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ecc_kv import metrics


def _batch(n=3, length=11, v=37, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, length, v, generator=g), torch.randint(0, v, (n, length), generator=g)


def test_nll_matches_cross_entropy():
    logits, ids = _batch()
    nll = metrics.token_nll(logits, ids)
    ref = F.cross_entropy(logits[:, :-1].reshape(-1, 37), ids[:, 1:].reshape(-1), reduction="none").view(3, 10)
    torch.testing.assert_close(nll, ref)
    torch.testing.assert_close(metrics.perplexity(nll), ref.mean(-1).exp())


def test_uniform_logits_perplexity_is_vocab_size():
    logits = torch.zeros(2, 5, 50)
    ids = torch.randint(0, 50, (2, 5))
    torch.testing.assert_close(metrics.perplexity(metrics.token_nll(logits, ids)), torch.full((2,), 50.0))


def test_kl_matches_kl_div():
    a, _ = _batch(seed=1)
    b, _ = _batch(seed=2)
    kl = metrics.kl_from_clean(b, a)
    ref = (
        F.kl_div(F.log_softmax(b[:, :-1], -1), F.log_softmax(a[:, :-1], -1), log_target=True, reduction="none")
        .sum(-1)
        .mean(-1)
    )
    torch.testing.assert_close(kl, ref)
    assert torch.equal(metrics.kl_from_clean(a, a), torch.zeros(3))
    with pytest.raises(ValueError, match="differ in shape"):
        metrics.kl_from_clean(a, a[:, :5])


def test_top5():
    logits = torch.zeros(1, 3, 10)
    logits[0, 0, :5] = 1.0  # predicts 0..4 at position 0
    logits[0, 1, 5:] = 1.0  # predicts 5..9 at position 1
    ids = torch.tensor([[0, 4, 2]])  # targets: 4 (hit), 2 (miss)
    assert metrics.topk_accuracy(logits, ids).tolist() == [0.5]


def test_catastrophic_threshold_and_nonfinite():
    ppl = torch.tensor([10.0, 101.0, float("inf"), float("nan"), 99.0])
    clean = torch.full((5,), 10.0)
    assert metrics.catastrophic(ppl, clean).tolist() == [False, True, True, True, False]
    assert metrics.CATASTROPHIC_MULTIPLE == 10.0
    with pytest.raises(ValueError, match="> 1"):
        metrics.catastrophic(ppl, clean, multiple=1.0)


def test_sample_metrics_lists():
    logits, ids = _batch()
    out = metrics.sample_metrics(logits, ids, logits)
    assert set(out) == {"nll", "ppl", "top5", "kl"} and all(len(v) == 3 for v in out.values())
    assert out["kl"] == [0.0, 0.0, 0.0]


def test_shape_errors():
    with pytest.raises(ValueError, match=r"\[N, L, V\]"):
        metrics.token_nll(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="at least 2 tokens"):
        metrics.token_nll(torch.zeros(1, 1, 4), torch.zeros(1, 1, dtype=torch.long))


def test_t_quantiles():
    assert metrics.t_quantile_975(1) == 12.706 and metrics.t_quantile_975(30) == 2.042
    # beyond the table the series must continue smoothly towards the normal quantile
    assert metrics.t_quantile_975(40) == pytest.approx(2.021, abs=2e-3)
    assert metrics.t_quantile_975(120) == pytest.approx(1.980, abs=1e-3)
    assert metrics.t_quantile_975(10**6) == pytest.approx(1.95996, abs=1e-4)
    with pytest.raises(ValueError):
        metrics.t_quantile_975(0)


def test_mean_ci():
    mean, lo, hi = metrics.mean_ci([1.0, 2.0, 3.0, 4.0])
    half = 3.182 * math.sqrt((2.25 + 0.25 + 0.25 + 2.25) / 3 / 4)
    assert mean == 2.5 and lo == pytest.approx(2.5 - half) and hi == pytest.approx(2.5 + half)
    assert metrics.mean_ci([5.0]) == (5.0, 5.0, 5.0)
    assert math.isinf(metrics.mean_ci([1.0, float("inf")])[0])
    with pytest.raises(ValueError):
        metrics.mean_ci([])


def test_wilson():
    p, lo, hi = metrics.wilson_ci(0, 10)
    assert p == 0.0 and lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-3)
    p, lo, hi = metrics.wilson_ci(5, 10)
    assert (lo, hi) == (pytest.approx(0.2366, abs=1e-3), pytest.approx(0.7634, abs=1e-3))
    with pytest.raises(ValueError):
        metrics.wilson_ci(3, 2)
