"""Inline executor: every element in this process, one after another (pdb-friendly)."""

from __future__ import annotations

from collections import Counter

from pipeline.plan import ExperimentPlan
from pipeline.runner import run_element


def run_inline(plans: list[ExperimentPlan]) -> Counter[str]:
    """Run all elements here; returns counts of run outcomes (done / failed / skipped)."""
    counts: Counter[str] = Counter()
    for plan in plans:
        for element in plan.elements():
            for outcome in run_element(plan.job(element)):
                counts[outcome.state] += 1
                if outcome.state == "failed":
                    print(f"  FAILED {plan.spec.name}/{outcome.run_id}: {outcome.error}", flush=True)
    return counts
