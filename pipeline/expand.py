"""Turn an experiment into runs: defaults + grid product x zip groups, minus ``exclude``.

A run's id is a readable slug of the parameters the spec varies plus a short hash of
its canonical config (task + every parameter), so the same config always lands in the
same folder: that is what resume relies on.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pipeline.spec import ExperimentSpec, SpecError, canonical_json, parse_yaml_value

HASH_LEN = 10
SLUG_MAX = 80
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")


@dataclass(frozen=True)
class Run:
    """One task call: the experiment it belongs to, its resolved parameters, and its id."""

    experiment: str
    task: str  # resolved "package.module:function"
    params: dict[str, Any] = field(hash=False)
    run_id: str = ""
    config_hash: str = ""
    varying: tuple[str, ...] = ()

    def config(self, spec_path: str = "", spec_hash: str = "") -> dict[str, Any]:
        """What ``config.json`` holds: everything needed to redo the run."""
        return {"experiment": self.experiment, "run_id": self.run_id, "config_hash": self.config_hash,
                "task": self.task, "params": self.params, "varying": list(self.varying),
                "spec_path": spec_path, "spec_hash": spec_hash}

    def to_dict(self) -> dict[str, Any]:
        return {"experiment": self.experiment, "task": self.task, "params": self.params, "run_id": self.run_id,
                "config_hash": self.config_hash, "varying": list(self.varying)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Run:
        return cls(experiment=d["experiment"], task=d["task"], params=dict(d["params"]), run_id=d["run_id"],
                   config_hash=d["config_hash"], varying=tuple(d.get("varying", ())))


def config_hash(task: str, params: dict[str, Any]) -> str:
    """Short hash of the canonical (task, params): equal configs, equal hashes, across machines."""
    return hashlib.sha256(canonical_json({"task": task, "params": params}).encode()).hexdigest()[:HASH_LEN]


def _slug_value(value: Any) -> str:
    if isinstance(value, bool):
        text = str(value).lower()
    elif isinstance(value, float):
        text = repr(value) if not math.isfinite(value) else f"{value:g}"
    elif isinstance(value, (str, int)):
        text = str(value)
    else:
        text = canonical_json(value)
    text = re.sub(r"\.{2,}", ".", _UNSAFE.sub("-", text))  # no '..' anywhere in a folder name
    return text or "x"  # a leading '-' stays: n=-1 must not read as n=1


def make_run_id(params: dict[str, Any], varying: Sequence[str], chash: str) -> str:
    """``key-value_key-value__<hash>``: readable and filesystem-safe, never '..' or '/'."""
    parts = [f"{_UNSAFE.sub('-', k)}-{_slug_value(params[k])}" for k in varying if k in params]
    slug = "_".join(parts)[:SLUG_MAX].strip("-._")
    return f"{slug}__{chash}" if slug else chash


def parse_assignments(items: Iterable[str], flag: str) -> dict[str, list[Any]]:
    """``["k=v", "k=w", "j=1"]`` -> ``{"k": [v, w], "j": [1]}`` with YAML-parsed values."""
    out: dict[str, list[Any]] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise SpecError(f"expected key=value, got {item!r}", key=flag)
        out.setdefault(key, []).append(parse_yaml_value(text))
    return out


def values_equal(a: Any, b: Any) -> bool:
    """Spec-level equality: 1 == 1.0, but True != 1 and '1' != 1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    return type(a) is type(b) and canonical_json(a) == canonical_json(b)


def _matches(params: dict[str, Any], rule: dict[str, list[Any]]) -> bool:
    return all(k in params and any(values_equal(params[k], v) for v in vals) for k, vals in rule.items())


def apply_overrides(exp: ExperimentSpec, overrides: dict[str, list[Any]]) -> ExperimentSpec:
    """``--set k=v``: replace a default (or pin a grid axis to one value); returns a copy."""
    if not overrides:
        return exp
    defaults, grid = dict(exp.defaults), dict(exp.grid)
    zip_keys = {k for g in exp.zip for k in g}
    for key, vals in overrides.items():
        if len(vals) != 1:
            raise SpecError(f"given {len(vals)} times; --set takes one value per key", file=exp.spec_path,
                            experiment=exp.name, key=f"--set {key}")
        if key in zip_keys:
            raise SpecError("varies in a zip group; use --only to pick values of zipped keys",
                            file=exp.spec_path, experiment=exp.name, key=f"--set {key}")
        if key in grid:
            grid[key] = [vals[0]]
        else:
            defaults[key] = vals[0]
    from dataclasses import replace

    return replace(exp, defaults=defaults, grid=grid)


def expand(exp: ExperimentSpec, task_path: str, only: dict[str, list[Any]] | None = None) -> list[Run]:
    """All runs of ``exp`` in a stable order (grid axes in spec order, first axis slowest).

    ``only`` keeps runs whose value for each key is one of the given values (keys AND,
    values OR). Duplicate configs (e.g. an axis pinned by ``--set``) are kept once.
    """
    axes: list[list[dict[str, Any]]] = [[{k: v} for v in vals] for k, vals in exp.grid.items()]
    for group in exp.zip:
        n = len(next(iter(group.values())))
        axes.append([{k: vals[i] for k, vals in group.items()} for i in range(n)])
    varying = tuple(exp.varying_keys())
    only = only or {}
    known = set(exp.param_keys())
    for key in only:
        if key not in known:
            raise SpecError(f"unknown parameter; parameters: {', '.join(sorted(known))}", file=exp.spec_path,
                            experiment=exp.name, key=f"--only {key}")
    runs: list[Run] = []
    seen: set[str] = set()
    for combo in itertools.product(*axes):
        params = dict(exp.defaults)
        for part in combo:
            params.update(part)
        if any(_matches(params, rule) for rule in exp.exclude):
            continue
        if only and not _matches(params, only):
            continue
        chash = config_hash(task_path, params)
        if chash in seen:
            continue
        seen.add(chash)
        runs.append(Run(experiment=exp.name, task=task_path, params=params,
                        run_id=make_run_id(params, varying, chash), config_hash=chash, varying=varying))
    if not runs:
        if only:
            raise SpecError("no runs to do: --only matches no run", file=exp.spec_path, experiment=exp.name,
                            key="--only")
        raise exp.error("no runs to do: exclude rules drop every run", "exclude")
    return runs


@dataclass(frozen=True)
class Element:
    """One job-array element: runs executed one after another in one process."""

    index: int
    runs: tuple[Run, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "runs": [r.to_dict() for r in self.runs]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Element:
        return cls(index=int(d["index"]), runs=tuple(Run.from_dict(r) for r in d["runs"]))


def pack(runs: Sequence[Run], runs_per_task: int, group_by: Sequence[str] = ()) -> list[Element]:
    """Pack runs into elements of at most ``runs_per_task`` runs, never mixing ``group_by`` values.

    Deterministic for a given run list: groups appear in order of their first run, and
    runs keep their expansion order inside a group (so ``run_task --index`` finds the
    same element that ``--emit-sbatch`` counted).
    """
    if runs_per_task < 1:
        raise ValueError(f"runs_per_task must be >= 1, got {runs_per_task}")
    groups: dict[str, list[Run]] = {}
    for run in runs:
        key = canonical_json([run.params.get(k) for k in group_by])
        groups.setdefault(key, []).append(run)
    elements: list[Element] = []
    for members in groups.values():
        for start in range(0, len(members), runs_per_task):
            elements.append(Element(index=len(elements), runs=tuple(members[start:start + runs_per_task])))
    return elements


def split_arrays(n: int, max_size: int) -> list[range]:
    """Split ``n`` element indices into chunks a cluster with ``MaxArraySize=max_size`` accepts."""
    if max_size < 1:
        raise ValueError(f"max_size must be >= 1, got {max_size}")
    return [range(s, min(s + max_size, n)) for s in range(0, n, max_size)]
