"""QuantKVCache: generation with the quantized-KV modes on a tiny random Llama (CPU, torch backend)."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from ecc_kv.bitpack import quantize_pack, unpack_dequantize
from ecc_kv.kv_quant_cache import PENDING, QuantKVCache
from ecc_kv.kv_quant_modes import KVQuantConfig, KVStats, quantized_kv
from ecc_kv.models import load_model
from ecc_kv.qaq import QAQConfig, QAQLayer


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return load_model("tiny-llama", device="cpu")


def _ids(length: int = 24, n: int = 2) -> torch.Tensor:
    return torch.randint(0, 256, (n, length), generator=torch.Generator().manual_seed(3))


def _generate(model, cfg: KVQuantConfig, ids: torch.Tensor, new: int = 6):
    stats = KVStats()
    with torch.no_grad(), quantized_kv(model, cfg, stats):
        cache = QuantKVCache(model, cfg, stats)
        out = model.generate(ids, attention_mask=torch.ones_like(ids), past_key_values=cache, max_new_tokens=new,
                             do_sample=False, output_scores=True, return_dict_in_generate=True)
    assert not PENDING  # every write was completed by the attention function
    return out, cache, stats


def test_fp16_mode_generates_like_the_plain_model(model):
    ids = _ids()
    with torch.no_grad():
        ref = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False)
    out, cache, _ = _generate(model, KVQuantConfig(mode="fp16"), ids)
    assert torch.equal(out.sequences, ref)
    assert cache.get_seq_length() == ids.shape[1] + 5  # the last new token is never fed back


@pytest.mark.parametrize("mode", ["int4", "kivi2", "qaq"])
def test_prefill_step_equals_the_full_forward_round_trip(model, mode):
    # the first generated token's logits come from the prompt stored in the mode: the same as the
    # full-forward evaluation path, which round-trips the whole prompt at once
    ids = _ids()
    cfg = KVQuantConfig(mode=mode, kivi_group=8, kivi_residual=8)
    with torch.no_grad(), quantized_kv(model, cfg):
        full = model(ids, use_cache=False).logits[:, -1]
    out, cache, stats = _generate(model, cfg, ids)
    assert torch.allclose(out.scores[0], full, atol=1e-5, rtol=0)
    assert cache.get_seq_length() == ids.shape[1] + 5 and stats.sums["k_numel"] > 0


def test_uniform_cache_holds_the_packed_tokens_and_saves_bytes(model):
    ids = _ids()
    cfg = KVQuantConfig(mode="int4")
    _, cache, stats = _generate(model, cfg, ids)
    layer = cache.layers[0]
    assert len(layer.chunks) == 6  # the prompt, then one chunk per decode step
    # the prompt chunk is exactly the packed prompt K of layer 0 (computed with a plain DynamicCache)
    plain = DynamicCache()
    with torch.no_grad():
        model(ids, past_key_values=plain)
    k0 = plain.layers[0].keys
    ref = unpack_dequantize(quantize_pack(k0, 4, None, "minmax", 0.0), k0.dtype)
    assert torch.equal(unpack_dequantize(layer.chunks[0][0], k0.dtype), ref)
    fp16_bytes = 2 * 2 * k0.numel() // ids.shape[1] * cache.get_seq_length() * cache.num_layers
    assert cache.stored_bytes() < 0.5 * fp16_bytes
    assert stats.finish()["ratio_real"] > 2.0


def test_faults_persist_and_are_counted(model):
    ids = _ids()
    cfg = KVQuantConfig(mode="int4", ber=0.02, seed=5)
    _, cache, stats = _generate(model, cfg, ids)
    assert stats.sums["flips"] > 0
    layer = cache.layers[1]
    first = [unpack_dequantize(pk, torch.float32) for pk, _ in layer.chunks]
    again = [unpack_dequantize(pk, torch.float32) for pk, _ in layer.chunks]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))  # no new faults at read
    clean = _generate(model, KVQuantConfig(mode="int4"), ids)[1].layers[1]
    assert any(not torch.equal(unpack_dequantize(a[0], torch.float32), unpack_dequantize(b[0], torch.float32))
               for a, b in zip(layer.chunks, clean.chunks, strict=True))


def test_qaq_new_tokens_wait_at_bits_max_and_requant_reallocates(model):
    ids = _ids()
    qcfg = QAQConfig(window=2, bits_min=2, bits_max=8)
    _, cache, _ = _generate(model, KVQuantConfig(mode="qaq", qaq=qcfg), ids, new=5)
    store = cache.layers[0].store
    assert isinstance(store, QAQLayer) and len(store.chunks) == 5 and store.exact_k is None
    for _, pv in store.chunks[1:]:  # decode steps: value widths stay at bits_max
        assert int(pv.widths.min()) == 8
    _, cache2, _ = _generate(model, KVQuantConfig(mode="qaq", qaq=qcfg, requant_every=2), ids, new=5)
    store2 = cache2.layers[0].store
    # 4 decode steps, re-allocation after steps 2 and 4: everything is one chunk again
    assert len(store2.chunks) == 1 and store2.seq_len() == ids.shape[1] + 4
    assert store2.exact_k.device.type == "cpu" and store2.exact_k.shape[-2] == ids.shape[1] + 4
    assert int(store2.chunks[0][1].widths.min()) < 8  # old tokens got fewer bits from their attention


def test_kivi_residual_and_bad_config(model):
    ids = _ids(length=20)
    _, cache, _ = _generate(model, KVQuantConfig(mode="kivi4", kivi_group=8, kivi_residual=8), ids, new=6)
    kivi = cache.layers[0].store
    n_q = sum(p.shape[-1] for p in kivi.k_chunks)  # keys are packed channel-major: tokens on the last dim
    assert n_q + kivi.k_res.shape[-2] == 25 and n_q % 8 == 0 and kivi.k_res.shape[-2] < 8
    with pytest.raises(ValueError, match="requant_every"):
        KVQuantConfig(mode="qaq", requant_every=-1)
    with pytest.raises(TypeError, match="KVQuantConfig"):
        QuantKVCache(model, {"mode": "int4"})
