"""From a spec file and CLI options to a checked plan: runs, their states, packed elements.

Shared by ``launch``, ``run_task`` and ``status`` so they agree on run ids and on
which element index holds which runs. Everything here is read-only on disk.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

from pipeline.expand import Element, Run, apply_overrides, expand, pack, parse_assignments
from pipeline.records import DONE, RunPaths
from pipeline.runner import ElementJob
from pipeline.spec import ExperimentSpec, load_spec
from pipeline.tasks import Task, TaskError, load_task, resolve_task_path

_HASH_SUFFIX = re.compile(r"__([0-9a-f]{10})$")


@dataclass
class ExperimentPlan:
    """One experiment, expanded and checked against the results folder."""

    spec: ExperimentSpec
    task: Task
    runs: list[Run]
    states: dict[str, str]
    results_dir: Path
    to_run: list[Run] = field(default_factory=list)

    @property
    def exp_dir(self) -> Path:
        return self.results_dir / self.spec.name

    def counts(self) -> Counter[str]:
        return Counter(self.states[r.run_id] for r in self.runs)

    def elements(self, which: str = "to_run") -> list[Element]:
        """Packed elements of the runs to do (``which="all"``: of every run, for ``run_task``)."""
        runs = self.runs if which == "all" else self.to_run
        arr = self.spec.array
        return pack(runs, arr.runs_per_task, arr.group_by)

    def job(self, element: Element) -> ElementJob:
        return ElementJob(results_dir=str(self.results_dir), runs=list(element.runs),
                          spec_path=str(self.spec.spec_path), spec_hash=self.spec.spec_hash,
                          label=f"{self.spec.name}[{element.index}]")


def _adopt_existing_ids(runs: list[Run], exp_dir: Path) -> list[Run]:
    """Reuse a folder holding the same config hash under another slug (e.g. after a new grid axis)."""
    if not exp_dir.is_dir():
        return runs
    by_hash: dict[str, str] = {}
    for child in exp_dir.iterdir():
        m = _HASH_SUFFIX.search(child.name)
        if m and child.is_dir():
            by_hash.setdefault(m.group(1), child.name)
    out = []
    for run in runs:
        existing = by_hash.get(run.config_hash)
        if existing and existing != run.run_id and not (exp_dir / run.run_id).exists():
            run = replace(run, run_id=existing)
        out.append(run)
    return out


def _param_in_message(exp: ExperimentSpec, message: str) -> str | None:
    for key in exp.param_keys():
        if re.search(rf"(?<![\w.-]){re.escape(key)}(?![\w-])", message):
            return key
    return None


def validate_runs(exp: ExperimentSpec, task: Task, runs: list[Run]) -> None:
    """Call the task's ``validate(params)`` on every run; the first rejection becomes a SpecError."""
    if task.validate is None:
        return
    for run in runs:
        try:
            task.validate(dict(run.params))
        except (ValueError, TypeError, KeyError) as exc:
            msg = str(exc).strip("'\"")
            key = _param_in_message(exp, msg)
            section = "grid" if key in exp.grid else "zip" if any(key in g for g in exp.zip) else "defaults"
            where = (section, key) if key else ()
            shown = {k: run.params[k] for k in run.varying if k in run.params}
            err = exp.error(f"task {task.path} rejects run {run.run_id} {shown}: {type(exc).__name__}: {msg}", *where)
            raise err from None


def build_plan(spec_path: str | Path, *, name: str | None = None, sets: list[str] | None = None,
               only: list[str] | None = None, results_dir: str | Path = "results", force: bool = False,
               validate: bool = True) -> list[ExperimentPlan]:
    """Load, expand, validate and classify; raises ``SpecError`` on any bad input."""
    spec_file = load_spec(spec_path)
    experiments = spec_file.select(name)
    overrides = parse_assignments(sets or [], "--set")
    filters = parse_assignments(only or [], "--only")
    results = Path(results_dir).resolve()
    plans: list[ExperimentPlan] = []
    for exp in experiments:
        exp = apply_overrides(exp, overrides)
        try:
            task_path = resolve_task_path(exp.task)
            task = load_task(task_path)
        except TaskError as exc:
            raise exp.error(str(exc), "task") from None
        runs = expand(exp, task_path, filters)
        if validate:
            validate_runs(exp, task, runs)
        runs = _adopt_existing_ids(runs, results / exp.name)
        states = {r.run_id: RunPaths.of(results, exp.name, r.run_id).state() for r in runs}
        to_run = [r for r in runs if force or states[r.run_id] != DONE]
        plans.append(ExperimentPlan(spec=exp, task=task, runs=runs, states=states, results_dir=results,
                                    to_run=to_run))
    return plans


def _fmt_resources(exp: ExperimentSpec) -> str:
    r = exp.resources
    parts = [f"gpus={r.gpus}", f"cpus={r.cpus}", f"mem={r.mem_gb:g}G" if r.mem_gb else "mem=default",
             f"time={r.time_min}min"]
    for key in ("constraint", "partition", "account", "qos", "gres"):
        if getattr(r, key):
            parts.append(f"{key}={getattr(r, key)}")
    parts += [f"{k}={v}" for k, v in r.extra.items()]
    return " ".join(parts)


def describe(plans: list[ExperimentPlan], max_array_size: int | None = None) -> str:
    """The human-readable plan ``launch`` prints (and ``--dry-run`` stops after)."""
    from pipeline.expand import split_arrays

    lines = []
    for plan in plans:
        exp, counts = plan.spec, plan.counts()
        lines.append(f"experiment {exp.name}: task {plan.task.path}")
        lines.append(f"  runs {len(plan.runs)}: done {counts.get('done', 0)}, failed {counts.get('failed', 0)}, "
                     f"pending {counts.get('pending', 0)}, new {counts.get('missing', 0)}; to run {len(plan.to_run)}")
        lines.append(f"  resources: {_fmt_resources(exp)}")
        if counts.get("pending", 0):
            lines.append(f"  note: {counts['pending']} pending run(s) (queued, running, or killed) will run again; "
                         "if their jobs are still in squeue, wait or scancel them first")
        elements = plan.elements()
        if elements:
            arr = exp.array
            grouping = f", grouped by {','.join(arr.group_by)}" if arr.group_by else ""
            chunks = split_arrays(len(elements), max_array_size) if max_array_size else [range(len(elements))]
            arrays = " ".join(f"[0-{len(c) - 1}%{arr.parallelism}]" for c in chunks)
            lines.append(f"  arrays: {len(elements)} elements (up to {arr.runs_per_task} runs each{grouping}) "
                         f"-> {len(chunks)} array(s) {arrays}")
    return "\n".join(lines)

