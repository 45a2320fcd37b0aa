"""Evaluation text: load it from one of a few sources, tokenise once, cut into fixed-length samples.

Sources (the ``text`` key of a spec):

- ``pydoc`` (alias ``pydoc_data.topics``, ``embedded``): the Python language reference topics
  that ship with every CPython (~465 kB of English prose with code), joined in sorted key
  order. Always available, the laptop default.
- ``wikitext-2-raw-v1`` / ``wikitext-103-raw-v1``: the WikiText test split through the
  ``datasets`` package (needs it installed and the data cached or the hub reachable).
- a path to a local UTF-8 text file.

Samples are contiguous, non-overlapping windows of ``seq_len`` tokens whose starts are spread
evenly over the whole token stream, so a handful of samples still covers many topics, and the
same (tokenizer, source, n_samples, seq_len) always gives the same tensor.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

EMBEDDED_TEXT = "pydoc"
EMBEDDED_ALIASES = ("pydoc", "pydoc_data.topics", "embedded")
WIKITEXT = ("wikitext-2-raw-v1", "wikitext-103-raw-v1")
SOURCES = (*EMBEDDED_ALIASES, *WIKITEXT, "<path to a .txt file>")


def _pydoc_text() -> str:
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k] for k in sorted(topics))


def _wikitext(name: str, split: str) -> str:
    try:
        import datasets
    except ImportError:
        raise ValueError(
            f"text={name!r} needs the 'datasets' package (pip install datasets); "
            f"offline, use text='pydoc' or a local file path"
        ) from None
    try:
        ds = datasets.load_dataset("wikitext", name, split=split)
    except Exception as exc:  # datasets raises many types (ConnectionError, FileNotFoundError, ...)
        offline = os.environ.get("HF_DATASETS_OFFLINE") or os.environ.get("HF_HUB_OFFLINE")
        hint = " (offline mode is set: only cached datasets load)" if offline else ""
        raise ValueError(
            f"text={name!r} (split {split!r}) could not be loaded{hint}: {type(exc).__name__}: {exc}. "
            f"Use text='pydoc' or a local file path instead"
        ) from exc
    return "".join(ds["text"])  # lines keep their own newlines in the raw variant


def load_text(source: str, *, split: str = "test") -> str:
    """The raw text of ``source`` (see module docstring); ``ValueError`` names the valid sources."""
    if not isinstance(source, str) or not source:
        raise TypeError(f"text must be a non-empty string, got {source!r}")
    if source in EMBEDDED_ALIASES:
        return _pydoc_text()
    if source in WIKITEXT:
        return _wikitext(source, split)
    path = Path(source).expanduser()
    if path.is_file():
        text = path.read_text(encoding="utf-8")
        if not text.strip():
            raise ValueError(f"text={source!r}: the file is empty")
        return text
    raise ValueError(
        f"text={source!r} is neither a known source nor an existing file; choose one of: {', '.join(SOURCES)}"
    )


def tokenize(tokenizer: Any, text: str) -> torch.Tensor:
    """All token ids of ``text`` as one 1-D int64 tensor (no special tokens added)."""
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def cut_samples(ids: torch.Tensor, n_samples: int, seq_len: int) -> torch.Tensor:
    """``n_samples`` non-overlapping windows of ``seq_len`` tokens, evenly spread: ``[n_samples, seq_len]``."""
    for key, val in (("n_samples", n_samples), ("seq_len", seq_len)):
        if isinstance(val, bool) or not isinstance(val, int):
            raise TypeError(f"{key} must be an int, got {val!r}")
        if val < 1:
            raise ValueError(f"{key} must be >= 1, got {val}")
    if seq_len < 2:
        raise ValueError(f"seq_len must be >= 2 (one input and one target token), got {seq_len}")
    n_tok = int(ids.numel())
    if n_samples * seq_len > n_tok:
        raise ValueError(
            f"n_samples={n_samples} x seq_len={seq_len} = {n_samples * seq_len} tokens, but the text has only "
            f"{n_tok}; at most n_samples={n_tok // seq_len} at this seq_len"
        )
    slack = n_tok - n_samples * seq_len  # spread the unused tokens evenly between the windows
    starts = [i * seq_len + (i * slack) // max(n_samples - 1, 1) for i in range(n_samples)]
    return torch.stack([ids[s : s + seq_len] for s in starts])  # [N, L]


def load_samples(
    tokenizer: Any, source: str = EMBEDDED_TEXT, n_samples: int = 8, seq_len: int = 256, *, split: str = "test"
) -> torch.Tensor:
    """Token samples ``[n_samples, seq_len]`` (int64, CPU) of ``source`` under ``tokenizer``."""
    return cut_samples(tokenize(tokenizer, load_text(source, split=split)), n_samples, seq_len)
