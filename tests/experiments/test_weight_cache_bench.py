"""Contract test of the weight_cache_bench task kind on a tiny CPU config."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from ecc_kv.experiments import weight_cache_bench as bench
from pipeline.context import RunContext

TINY = {"n_neurons": 256, "hidden": 16, "m": 32, "churn": 0.25, "steps": 12, "warmup": 2, "threads": 1,
        "methods": ["paired", "hybrid", "rebuild", "masking"], "tau": 0.1}


def test_run_and_summarize(tmp_path: Path) -> None:
    raw = bench.run(dict(TINY), RunContext.for_tests(tmp_path))
    json.dumps(raw)  # raw must be JSON-serialisable
    assert raw["bound_rows"] == 8 and raw["row_bytes"] == 3 * 16 * 4
    for method in TINY["methods"]:
        res = raw["methods"][method]
        assert len(res["times_ms"]) == 12 and all(t > 0 for t in res["times_ms"])
        assert len(res["rows_written"]) == 12
    assert raw["methods"]["paired"]["rows_written"] == [8] * 12  # A = R = k: exactly k rows per step
    assert raw["methods"]["rebuild"]["rows_written"] == [32] * 12
    assert raw["methods"]["hybrid"]["rows_written"] == [32] * 12  # k = 8 > tau * m = 3.2: rebuilds
    s = bench.summarize(raw)
    json.dumps(s)
    assert s["paired_bytes_vs_bound"] == 1.0 and s["rebuild_bytes_vs_bound"] == 4.0
    assert s["paired_consistent"] == 1 and s["hybrid_consistent"] == 1
    assert s["paired_speedup_vs_rebuild"] > 0 and s["copy_gbps"] > 0
    assert all(isinstance(v, (int, float, str)) or v is None for v in s.values())
    row = {**TINY, "methods": "x", **s}
    made = bench.plots(pd.DataFrame([row, {**row, "churn_k": 16, "churn": 16}]), tmp_path / "plots")
    assert made and all(p.stat().st_size > 0 for p in made)


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ({"placement": "disk"}, "placement"),
        ({"methods": ["paired", "magic"]}, "methods"),
        ({"churn": -1}, "churn"),
        ({"churn": 1.5}, "fraction"),
        ({"churn": "lots"}, "churn"),
        ({"m": 10_000}, "m=10000"),
        ({"placement": "offloaded", "methods": ["masking"]}, "masking"),
        ({"methods": ["paired_graph"]}, "paired_graph"),
        ({"methods": ["paired_async"]}, "paired_async"),
        ({"planner": "magic"}, "planner"),
        ({"offload": "teleport"}, "offload"),
        ({"mask_feed": "ring"}, "mask_feed='ring'"),
        ({"mask_feed": "pipe"}, "mask_feed"),
        ({"placement": "offloaded", "methods": ["paired"], "planner": "triton"}, "planner='triton'"),
        ({"placement": "offloaded", "methods": ["paired"], "planner": "fused", "offload": "staged"}, "offload='direct'"),
        ({"colour": 1}, "unknown parameter"),
        ({"dtype": "fp64"}, "dtype"),
        ({"host_lead_ms": -1}, "host_lead_ms"),
        ({"host_lead_ms": "long"}, "host_lead_ms"),
    ],
)
def test_validate_names_the_key(bad: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        bench.validate({**TINY, **bad})


def test_churn_int_is_a_count_float_a_fraction() -> None:
    assert bench._config({**TINY, "churn": 1})["churn_k"] == 1
    assert bench._config({**TINY, "churn": 1.0})["churn_k"] == 32  # 100% churn
    assert bench._config({**TINY, "churn": 0.25})["churn_k"] == 8
    assert bench._config({**TINY, "churn": 500})["churn_k"] == 32  # capped at m (and N - m)


def test_fused_planner_and_same_bytes_references(tmp_path: Path) -> None:
    """The one-launch planner runs through the task kind (one program under the
    interpreter) and stays exact; the copy reference moves the same k rows."""
    # CPU tensors only under the interpreter (CI); with a GPU the fused kernel needs device memory
    place = "gpu" if torch.cuda.is_available() else "cpu"
    raw = bench.run({**TINY, "planner": "fused", "methods": ["paired", "rebuild"], "steps": 4, "placement": place},
                    RunContext.for_tests(tmp_path))
    assert raw["methods"]["paired"]["rows_written"] == [8] * 4 and raw["methods"]["paired"]["consistent"] == 1
    assert (raw["copy_graph_gbps"] is None) == (place == "cpu") and raw["h2d_gbps"] is None  # no PCIe either way
    s = bench.summarize(raw)
    assert s["paired_bytes_vs_bound"] == 1.0 and s["copy_gbps"] > 0
