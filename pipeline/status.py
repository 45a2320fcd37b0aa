"""``python -m pipeline.status RESULTS_DIR_OR_SPEC``: done / failed / pending / missing per experiment.

Given a results folder (``results/`` or ``results/<experiment>``) it counts the run
folders it finds; given a spec it also counts runs that have no folder yet (missing).
``pending`` = submitted, running, or killed before finishing (relaunch redoes it).
Exit codes: 0 nothing failed, 1 some run failed (or has an unreadable summary), 2 bad input.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.records import CORRUPT, DONE, FAILED, MISSING, PENDING, RunPaths, read_json
from pipeline.spec import SpecError

STATES = (DONE, FAILED, PENDING, MISSING, CORRUPT)


@dataclass
class ExperimentStatus:
    name: str
    counts: Counter[str] = field(default_factory=Counter)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (run_id, one-line reason)


def _reason(paths: RunPaths) -> str:
    err = read_json(paths.error)
    if not isinstance(err, dict):
        return "error.json unreadable"
    message = str(err.get("message") or err.get("reason") or "unknown error")
    return message.splitlines()[0][:200] if message else "unknown error"


def is_run_dir(path: Path) -> bool:
    return path.is_dir() and not path.name.startswith(".") and (
        (path / "config.json").exists() or (path / "summary.json").exists() or (path / "error.json").exists())


def experiment_dirs(path: Path) -> list[Path]:
    """``path`` itself when it holds run folders, else its children that do."""
    path = Path(path)
    if not path.is_dir():
        return []
    children = [c for c in sorted(path.iterdir()) if c.is_dir() and not c.name.startswith(".")]
    if any(is_run_dir(c) for c in children):
        return [path]
    return [c for c in children if any(is_run_dir(g) for g in c.iterdir() if g.is_dir())]


def status_of_dir(exp_dir: Path) -> ExperimentStatus:
    st = ExperimentStatus(exp_dir.name)
    for run_dir in sorted(exp_dir.iterdir()):
        if not is_run_dir(run_dir):
            continue
        paths = RunPaths(run_dir)
        state = paths.state()
        st.counts[state] += 1
        if state == FAILED:
            st.failures.append((run_dir.name, _reason(paths)))
    return st


def status_of_spec(spec: str, name: str | None, sets: list[str], only: list[str], results: str) -> list[ExperimentStatus]:
    from pipeline.plan import build_plan

    out = []
    for plan in build_plan(spec, name=name, sets=sets, only=only, results_dir=results, validate=False):
        st = ExperimentStatus(plan.spec.name)
        for run in plan.runs:
            state = plan.states[run.run_id]
            st.counts[state] += 1
            if state == FAILED:
                st.failures.append((run.run_id, _reason(RunPaths.of(plan.results_dir, run.experiment, run.run_id))))
        out.append(st)
    return out


def render(statuses: list[ExperimentStatus]) -> str:
    width = max([len("experiment")] + [len(s.name) for s in statuses])
    head = f"{'experiment':<{width}}  " + "  ".join(f"{s:>7}" for s in STATES) + "    total"
    lines = [head]
    for st in statuses:
        lines.append(f"{st.name:<{width}}  " + "  ".join(f"{st.counts.get(s, 0):>7}" for s in STATES)
                     + f"  {sum(st.counts.values()):>7}")
    for st in statuses:
        for run_id, reason in st.failures:
            lines.append(f"FAILED {st.name}/{run_id}: {reason}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline.status", description=__doc__.splitlines()[0])
    p.add_argument("target", help="a results folder (results/ or results/<experiment>) or a spec file")
    p.add_argument("--name", help="spec: only this experiment")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="spec: as given to launch")
    p.add_argument("--only", action="append", default=[], metavar="KEY=VALUE", help="spec: as given to launch")
    p.add_argument("--results", default="results", help="spec: results directory (default ./results)")
    args = p.parse_args(argv)
    target = Path(args.target)
    try:
        if target.is_file():
            statuses = status_of_spec(args.target, args.name, args.set, args.only, args.results)
        elif target.is_dir():
            statuses = [status_of_dir(d) for d in experiment_dirs(target)]
            if not statuses:
                print(f"{target}: no run records found")
                return 0
        else:
            raise SpecError("no such file or directory", file=target)
    except (SpecError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(render(statuses))
    return 1 if any(st.counts.get(FAILED, 0) or st.counts.get(CORRUPT, 0) for st in statuses) else 0


if __name__ == "__main__":
    sys.exit(main())
