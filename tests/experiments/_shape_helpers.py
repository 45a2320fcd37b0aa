"""Helpers shared by the shape-benchmark contract tests (not a test module itself)."""

from __future__ import annotations

import json
import math
from typing import Any

# tiny, fast timing settings; threads=1 keeps CPU timings sane on a shared 2-core box
TINY_TIMING: dict[str, Any] = {"warmup": 1, "repeats": 3, "inner": 1, "threads": 1}


def assert_json_clean(obj: Any) -> None:
    """raw/summary must survive strict JSON (no NaN/inf, no tensors)."""
    json.dumps(obj, allow_nan=False)


def assert_flat_summary(summary: dict[str, Any]) -> None:
    """Flat: every value a number, string, bool or None; numbers finite."""
    for key, value in summary.items():
        assert isinstance(value, (int, float, str, bool, type(None))), (key, value)
        if isinstance(value, float):
            assert math.isfinite(value), (key, value)
    assert_json_clean(summary)
