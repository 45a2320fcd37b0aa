"""``python -m pipeline.run_task SPEC --index N``: run array element N (the plain-sbatch path).

The spec is expanded exactly as ``launch --emit-sbatch`` did (same ``--name``,
``--set``, ``--only``), every run is packed (done ones included, so indices do not
shift as runs finish), and element N runs here; its done runs are skipped. Without
``--name`` the elements of all experiments are numbered one after another in file
order. ``--count`` prints the number of elements instead (to size ``--array``).
Exit codes: 0 every run of the element done, 1 some failed, 2 bad input.
"""

from __future__ import annotations

import argparse
import sys

from pipeline.plan import ExperimentPlan, build_plan
from pipeline.runner import ElementJob, run_element, setup_logging
from pipeline.spec import SpecError


def element_at(plans: list[ExperimentPlan], index: int) -> ElementJob:
    """Global element ``index`` across the plans (file order); ``ValueError`` when out of range."""
    offset = 0
    for plan in plans:
        elements = plan.elements("all")
        if index < offset + len(elements):
            return plan.job(elements[index - offset])
        offset += len(elements)
    raise ValueError(f"--index {index} out of range: the spec has {offset} element(s), valid 0-{offset - 1}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline.run_task", description=__doc__.splitlines()[0])
    p.add_argument("spec")
    p.add_argument("--index", type=int, help="element index (the Slurm array task id plus any offset)")
    p.add_argument("--count", action="store_true", help="print the number of elements and exit")
    p.add_argument("--name")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--only", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--results", default="results")
    args = p.parse_args(argv)
    setup_logging()
    try:
        plans = build_plan(args.spec, name=args.name, sets=args.set, only=args.only, results_dir=args.results)
        if args.count:
            print(sum(len(plan.elements("all")) for plan in plans))
            return 0
        if args.index is None or args.index < 0:
            raise ValueError(f"--index must be given and >= 0, got {args.index}")
        job = element_at(plans, args.index)
    except (SpecError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    outcomes = run_element(job)
    for o in outcomes:
        print(f"{job.label} {o.run_id}: {o.state}" + (f" ({o.error})" if o.error else ""), flush=True)
    return 1 if any(o.state == "failed" for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
