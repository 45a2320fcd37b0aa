"""ecc_kv.text: sources, deterministic evenly spread samples, clear errors."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from ecc_kv import text
from ecc_kv.models import byte_tokenizer


def test_embedded_text_aliases():
    t = text.load_text("pydoc")
    assert len(t) > 300_000 and "assert" in t
    assert text.load_text("pydoc_data.topics") == t == text.load_text("embedded")


def test_file_source(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("hello world " * 50, encoding="utf-8")
    assert text.load_text(str(f)).startswith("hello world")
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(ValueError, match="empty"):
        text.load_text(str(tmp_path / "empty.txt"))


def test_unknown_source_lists_choices():
    with pytest.raises(ValueError, match="pydoc.*wikitext-2-raw-v1"):
        text.load_text("no-such-corpus")
    with pytest.raises(TypeError):
        text.load_text("")


@pytest.mark.skipif(importlib.util.find_spec("datasets") is not None, reason="datasets is installed")
def test_wikitext_without_datasets_is_clear():
    with pytest.raises(ValueError, match="needs the 'datasets' package"):
        text.load_text("wikitext-2-raw-v1")


def test_cut_samples_spread_and_deterministic():
    ids = torch.arange(1000)
    s = text.cut_samples(ids, 4, 100)
    assert s.shape == (4, 100)
    assert s[0, 0] == 0 and s[-1, -1] == 999  # first window at the start, last at the end
    starts = s[:, 0].tolist()
    assert all(b - a >= 100 for a, b in zip(starts, starts[1:], strict=False))  # non-overlapping
    assert torch.equal(s, text.cut_samples(ids, 4, 100))
    one = text.cut_samples(ids, 1, 7)
    assert one.tolist() == [list(range(7))]


def test_cut_samples_errors():
    ids = torch.arange(50)
    with pytest.raises(ValueError, match="at most n_samples=5"):
        text.cut_samples(ids, 6, 10)
    with pytest.raises(ValueError, match="seq_len must be >= 2"):
        text.cut_samples(ids, 1, 1)
    with pytest.raises(TypeError, match="n_samples"):
        text.cut_samples(ids, 2.0, 10)


def test_load_samples_bytes():
    s = text.load_samples(byte_tokenizer(), "pydoc", n_samples=3, seq_len=64)
    assert s.dtype == torch.int64 and s.shape == (3, 64) and int(s.max()) < 256
    assert torch.equal(s, text.load_samples(byte_tokenizer(), "pydoc", n_samples=3, seq_len=64))
