"""Shared test setup: GPU tests skip cleanly on CPU; Triton runs in interpreter mode without a GPU."""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    # Triton kernels run on CPU tensors through the interpreter (slow: keep shapes small).
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture
def device() -> str:
    """The device tests run their tensors on: CUDA when present, else CPU (Triton interpreted)."""
    return "cuda" if torch.cuda.is_available() else "cpu"
