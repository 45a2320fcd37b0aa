"""``python -m pipeline.launch SPEC``: expand, check, and run or submit an experiment spec.

Exit codes: 0 all requested runs done (or submitted without ``--wait``), 1 some run
failed or is unfinished, 2 bad input (nothing written, nothing submitted), 130 Ctrl-C.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from collections import Counter
from pathlib import Path

from pipeline.executors import EXECUTORS, resolve_executor
from pipeline.expand import split_arrays
from pipeline.plan import ExperimentPlan, build_plan, describe
from pipeline.records import RunPaths, write_json_atomic
from pipeline.runner import setup_logging
from pipeline.spec import SpecError

SBATCH_SCRIPT = "slurm/run_spec.sbatch"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipeline.launch", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("spec", help="YAML experiment spec")
    p.add_argument("--name", help="run only this experiment of a multi-experiment spec")
    p.add_argument("--executor", default="auto", choices=EXECUTORS,
                   help="auto: slurm when sbatch is on PATH, else local (default: auto)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and exit; writes and submits nothing")
    p.add_argument("--force", action="store_true", help="rerun runs that are already done")
    p.add_argument("--only", action="append", default=[], metavar="KEY=VALUE",
                   help="keep runs with this value (repeat: same key = OR, different keys = AND)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a default (YAML value), or pin a grid axis to one value")
    p.add_argument("--results", default="results", help="results directory (default: ./results)")
    p.add_argument("--wait", action="store_true", help="slurm: show a progress bar until the arrays end")
    p.add_argument("--jobs", type=int, default=None, help="local: parallel worker processes "
                   "(default: number of GPUs, 1 without GPUs)")
    p.add_argument("--max-array-size", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--emit-sbatch", action="store_true",
                   help="print the sbatch command(s) of the plain-sbatch path (slurm/run_spec.sbatch) and exit")
    return p


def passthrough_args(args: argparse.Namespace, name: str) -> list[str]:
    """The options ``run_task`` needs to expand the spec exactly as this launch did."""
    out = ["--name", name]
    for item in args.set:
        out += ["--set", item]
    for item in args.only:
        out += ["--only", item]
    if args.results != "results":
        out += ["--results", args.results]
    return out


def sbatch_commands(plans: list[ExperimentPlan], args: argparse.Namespace, max_size: int) -> list[str]:
    """Exact sbatch command lines for the plain-sbatch path, one per array (elements of ALL runs,
    so ``run_task --index`` maps to the same runs; done runs are skipped inside the element)."""
    cmds = []
    for plan in plans:
        r, arr = plan.spec.resources, plan.spec.array
        n = len(plan.elements("all"))
        log_dir = Path(args.results) / plan.spec.name / ".slurm"
        opts = [f"--job-name={plan.spec.name}", f"--time={r.time_min}", f"--cpus-per-task={r.cpus}",
                f"--gpus-per-node={r.gpus}", f"--constraint={r.constraint or ''}"]
        if r.mem_gb:
            opts.append(f"--mem={int(r.mem_gb * 1024)}M")
        for key in ("partition", "account", "qos", "gres"):
            if getattr(r, key):
                opts.append(f"--{key}={getattr(r, key)}")
        opts += [f"--{k}={v}" if v else f"--{k}" for k, v in r.extra.items()]
        opts.append(f"--output={log_dir}/%A_%a.out")
        for chunk in split_arrays(n, max_size):
            export = [f"--export=ALL,INDEX_OFFSET={chunk.start}"] if chunk.start else []
            words = ["sbatch", f"--array=0-{len(chunk) - 1}%{arr.parallelism}", *opts, *export, SBATCH_SCRIPT,
                     str(plan.spec.spec_path), *passthrough_args(args, plan.spec.name)]
            cmds.append(f"mkdir -p {shlex.quote(str(log_dir))} && " + shlex.join(words))
    return cmds


def _prepare(plans: list[ExperimentPlan], force: bool) -> None:
    """After every check passed: forget old outcomes on --force, mark runs as submitted."""
    for plan in plans:
        for run in plan.to_run:
            paths = RunPaths.of(plan.results_dir, run.experiment, run.run_id)
            if force:
                paths.clear_outcome()
            if not paths.config.exists():
                write_json_atomic(paths.config, run.config(str(plan.spec.spec_path), plan.spec.spec_hash))


def _report(counts: Counter[str], plans: list[ExperimentPlan]) -> int:
    print("runs: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    for plan in plans:
        print(f"status: python -m pipeline.status {plan.exp_dir}")
    return 0 if set(counts) <= {"done", "skipped"} else 1


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    setup_logging(logging.INFO)
    try:
        for flag, value in (("--jobs", args.jobs), ("--max-array-size", args.max_array_size)):
            if value is not None and value < 1:
                raise ValueError(f"{flag} must be >= 1, got {value}")
        executor = resolve_executor(args.executor)
        plans = build_plan(args.spec, name=args.name, sets=args.set, only=args.only, results_dir=args.results,
                           force=args.force)
    except (SpecError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.emit_sbatch:
        from pipeline.executors.slurm_info import cluster_max_array_size

        for cmd in sbatch_commands(plans, args, args.max_array_size or cluster_max_array_size()):
            print(cmd)
        return 0
    max_size = None
    if executor == "slurm":
        from pipeline.executors.slurm_info import cluster_max_array_size, cluster_partitions

        max_size = args.max_array_size or cluster_max_array_size()
        partitions = cluster_partitions()
        for plan in plans:  # an unknown partition is bad input: refuse before writing anything
            wanted = plan.spec.resources.partition
            if partitions and wanted and not set(wanted.split(",")) <= set(partitions):
                problem = f"partition {wanted!r} does not exist on this cluster; partitions: {', '.join(partitions)}"
                print(f"error: {plan.spec.error(problem, 'resources', 'partition')}", file=sys.stderr)
                return 2
    print(describe(plans, max_size))
    if args.dry_run:
        print(f"dry run: nothing submitted (executor would be {executor})")
        return 0
    if not any(plan.to_run for plan in plans):
        print("nothing to do: every run is done (use --force to rerun)")
        return 0
    _prepare(plans, args.force)
    try:
        if executor == "inline":
            from pipeline.executors.inline import run_inline

            return _report(run_inline(plans), plans)
        if executor == "local":
            from pipeline.executors.local import run_local

            return _report(run_local(plans, jobs=args.jobs), plans)
        from pipeline.executors import slurm

        try:
            arrays = slurm.submit(plans, max_size)
        except Exception as exc:  # sbatch refused (bad partition/account/qos...): say so, no traceback
            detail = str(exc).strip().splitlines()
            print(f"error: Slurm refused the submission: {type(exc).__name__}: "
                  f"{' '.join(detail[-3:]) if detail else ''}", file=sys.stderr)
            return 1
        slurm.print_hints(arrays, plans)
        if args.wait:
            return _report(slurm.wait(arrays, plans[0].results_dir), plans)
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
