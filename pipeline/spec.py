"""Experiment specs: load a YAML file, check every key, and return typed experiments.

Errors are ``SpecError`` (a ``ValueError``) that name the file, the line, the
experiment, the key and the problem, so a typo is fixed before anything is submitted.

A file holds either one experiment (``name``, ``task``, ``grid``, ... at the top level)
or several under ``experiments: [...]``. With ``experiments``, every other top-level
key (all experiment keys but ``name``) is a shared default: each experiment inherits
it; the mappings ``resources``, ``array``, ``defaults`` and ``grid`` are merged key by
key with the experiment's own, the rest (``task``, ``zip``, ``exclude``,
``description``) are replaced by the experiment's value when it gives one.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
PARAM_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")

EXPERIMENT_KEYS = ("name", "description", "task", "resources", "array", "defaults", "grid", "zip", "exclude")
SHARED_KEYS = ("description", "task", "resources", "array", "defaults", "grid", "zip", "exclude", "experiments")
MERGED_KEYS = ("resources", "array", "defaults", "grid")  # merged key by key; other keys are replaced
RESOURCE_KEYS = ("gpus", "cpus", "mem_gb", "time_min", "constraint", "partition", "account", "qos", "gres", "extra")
ARRAY_KEYS = ("parallelism", "runs_per_task", "group_by")


class SpecError(ValueError):
    """A problem in a spec file, with its location; the CLIs turn it into exit code 2."""

    def __init__(
        self, problem: str, *, file: str | Path | None = None, line: int | None = None,
        experiment: str | None = None, key: str | None = None,
    ) -> None:
        self.problem, self.file, self.line, self.experiment, self.key = problem, file, line, experiment, key
        where = [f"{file}:{line}" if file and line else str(file) if file else ""]
        if experiment:
            where.append(f"experiment '{experiment}'")
        if key:
            where.append(f"key '{key}'")
        prefix = ": ".join(w for w in where if w)
        super().__init__(f"{prefix}: {problem}" if prefix else problem)


@dataclass(frozen=True)
class Resources:
    """What one array element asks the scheduler for (and how the local executor shares GPUs)."""

    gpus: int = 0
    cpus: int = 1
    mem_gb: float | None = None
    time_min: int = 60
    constraint: str | None = None
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    gres: str | None = None
    extra: dict[str, str] = field(default_factory=dict)  # more sbatch options, e.g. {exclusive: ""}


@dataclass(frozen=True)
class ArraySettings:
    """How runs are packed into job-array elements.

    ``runs_per_task`` runs share one element (one process, one ``ctx.shared``);
    ``group_by`` keys keep runs with equal values together, so an element never mixes
    two models, say; ``parallelism`` is the ``%`` throttle of the array.
    """

    parallelism: int = 16
    runs_per_task: int = 1
    group_by: tuple[str, ...] = ()


@dataclass
class ExperimentSpec:
    """One experiment: a task and the parameter space to run it over."""

    name: str
    task: str
    resources: Resources
    array: ArraySettings
    defaults: dict[str, Any]
    grid: dict[str, list[Any]]
    zip: list[dict[str, list[Any]]]
    exclude: list[dict[str, list[Any]]]
    spec_path: Path
    description: str = ""
    spec_hash: str = ""
    lines: dict[tuple[Any, ...], int] = field(default_factory=dict, repr=False)
    base_path: tuple[Any, ...] = ()  # where this experiment sits in the file, for line lookups

    def line_of(self, *path: Any) -> int | None:
        """Line of a key inside this experiment (or of the experiment itself)."""
        for cut in range(len(path), -1, -1):
            line = self.lines.get(self.base_path + tuple(path[:cut]))
            if line is not None:
                return line
        return None

    def error(self, problem: str, *path: Any) -> SpecError:
        """A ``SpecError`` located at ``path`` (e.g. ``"grid", "ber"``) in this experiment."""
        key = ".".join(str(p) for p in path) if path else None
        return SpecError(problem, file=self.spec_path, line=self.line_of(*path), experiment=self.name, key=key)

    def param_keys(self) -> list[str]:
        """Every parameter name: defaults, then grid axes, then zip keys (spec order)."""
        keys = list(self.defaults)
        for k in list(self.grid) + [k for group in self.zip for k in group]:
            if k not in keys:
                keys.append(k)
        return keys

    def varying_keys(self) -> list[str]:
        """Keys the spec declares as varying (grid axes and zip keys), in spec order."""
        return list(self.grid) + [k for group in self.zip for k in group]


@dataclass
class SpecFile:
    """A loaded spec file: its experiments in file order."""

    path: Path
    experiments: list[ExperimentSpec]

    def select(self, name: str | None) -> list[ExperimentSpec]:
        """The experiments ``--name`` picks (all when ``name`` is None)."""
        if name is None:
            return list(self.experiments)
        for exp in self.experiments:
            if exp.name == name:
                return [exp]
        names = ", ".join(e.name for e in self.experiments)
        raise SpecError(f"no experiment named '{name}'; the file has: {names}", file=self.path, key="--name")


# --------------------------------------------------------------------------- YAML loading


class _Loader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys and reads ``1e-3`` as a float (YAML 1.2)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key '{key}' (first at line {seen[key]})", key_node.start_mark
                )
            if isinstance(key, (str, int, float, bool)):
                seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


_FLOAT_RE = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)
_Loader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
for _ch in list("-+0123456789."):
    _Loader.yaml_implicit_resolvers[_ch] = [
        (tag, rx) for tag, rx in _Loader.yaml_implicit_resolvers.get(_ch, []) if tag != "tag:yaml.org,2002:float"
    ]
    _Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_RE, [_ch])


def parse_yaml_value(text: str) -> Any:
    """A ``--set``/``--only`` value: YAML-parsed like the spec (``1e-3`` is a float, ``[1,2]`` a list)."""
    try:
        return yaml.load(text, Loader=_Loader) if text.strip() else ""
    except yaml.YAMLError:
        return text


def _line_map(node: yaml.Node, path: tuple[Any, ...], out: dict[tuple[Any, ...], int]) -> None:
    """Record the 1-based line of every mapping key and list item, keyed by its path."""
    out.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            out[path + (key,)] = key_node.start_mark.line + 1
            _line_map(value_node, path + (key,), out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out[path + (i,)] = item.start_mark.line + 1
            _line_map(item, path + (i,), out)


def canonical_json(obj: Any) -> str:
    """Stable text of a JSON-like value (sorted keys, no spaces): the input of every hash."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def load_spec(path: str | Path) -> SpecFile:
    """Read and check a spec file; raises ``SpecError`` naming file, line and key."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpecError(f"cannot read spec: {exc.strerror or exc}", file=path) from None
    try:
        node = yaml.compose(text, Loader=_Loader)
        data = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError(f"YAML syntax error: {problem}", file=path, line=mark.line + 1 if mark else None) from None
    lines: dict[tuple[Any, ...], int] = {}
    if node is not None:
        _line_map(node, (), lines)
    if not isinstance(data, dict):
        raise SpecError(f"the top level must be a mapping of keys, got {type(data).__name__}", file=path, line=1)
    for key in data:
        if not isinstance(key, str):
            raise SpecError(f"keys must be strings, got {key!r}", file=path, line=lines.get((key,)))

    def err(problem: str, *p: Any, experiment: str | None = None) -> SpecError:
        line = next((lines[p[:c]] for c in range(len(p), -1, -1) if p[:c] in lines), None)
        return SpecError(problem, file=path, line=line, experiment=experiment, key=".".join(map(str, p)) or None)

    if "experiments" not in data:
        _check_keys(data, EXPERIMENT_KEYS, (), err, None)
        exps = [_build_experiment(data, (), path, lines, err)]
    else:
        _check_keys(data, SHARED_KEYS, (), err, None, hint="(with 'experiments', only shared keys are allowed here)")
        items = data["experiments"]
        if not isinstance(items, list) or not items:
            raise err("must be a non-empty list of experiment mappings", "experiments")
        shared = {k: v for k, v in data.items() if k != "experiments"}
        exps, seen = [], {}
        for i, item in enumerate(items):
            base = ("experiments", i)
            if not isinstance(item, dict):
                raise err(f"each experiment must be a mapping, got {type(item).__name__}", *base)
            _check_keys(item, EXPERIMENT_KEYS, base, err, item.get("name"))
            merged = dict(shared)
            for k, v in item.items():
                if k in MERGED_KEYS and isinstance(v, dict) and isinstance(shared.get(k), dict):
                    merged[k] = {**shared[k], **v}
                else:
                    merged[k] = v
            exp = _build_experiment(merged, base, path, lines, err)
            if exp.name in seen:
                raise err(f"duplicate experiment name '{exp.name}' (first at item {seen[exp.name]})", *base, "name")
            seen[exp.name] = i
            exps.append(exp)
    return SpecFile(path=path, experiments=exps)


def _check_keys(data: dict[str, Any], allowed: tuple[str, ...], base: tuple[Any, ...], err: Any,
                experiment: str | None, hint: str = "") -> None:
    for key in data:
        if key not in allowed:
            raise err(f"unknown key '{key}'{' ' + hint if hint else ''}; valid keys: {', '.join(allowed)}",
                      *base, key, experiment=experiment)


def _build_experiment(data: dict[str, Any], base: tuple[Any, ...], path: Path,
                      lines: dict[tuple[Any, ...], int], err: Any) -> ExperimentSpec:
    name = data.get("name")
    if name is None:
        raise err("missing 'name' (the results folder of the experiment)", *base)
    if not isinstance(name, str) or not NAME_RE.match(name) or name in (".", ".."):
        raise err(f"invalid name {name!r}: use letters, digits, '.', '_' or '-' (no '/', no '..'), "
                  "so the results folder stays inside the results directory", *base, "name")
    exp_name = name

    def e(problem: str, *p: Any) -> SpecError:
        return err(problem, *base, *p, experiment=exp_name)

    task = data.get("task")
    if not isinstance(task, str) or not task.strip():
        raise e("missing or empty 'task': give 'package.module:run' or a registered short name", "task")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise e("must be a string", "description")
    resources = _build_resources(data.get("resources") or {}, e)
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise e(f"must be a mapping of parameter -> value, got {type(defaults).__name__}", "defaults")
    for k in defaults:
        _check_param_name(k, e, "defaults")
    grid = data.get("grid") or {}
    if not isinstance(grid, dict):
        raise e(f"must be a mapping of parameter -> list of values, got {type(grid).__name__}", "grid")
    for k, v in grid.items():
        _check_param_name(k, e, "grid")
        if not isinstance(v, list):
            raise e(f"must be a list of values, got {v!r}; put fixed values under 'defaults'", "grid", k)
        if not v:
            raise e("empty list: give at least one value", "grid", k)
    zips = _build_zip(data.get("zip") or [], grid, e)
    params = set(defaults) | set(grid) | {k for g in zips for k in g}
    exclude = _build_exclude(data.get("exclude") or [], params, e)
    array = _build_array(data.get("array") or {}, params, e)
    canon = {"name": name, "task": task, "defaults": defaults, "grid": grid, "zip": zips, "exclude": exclude,
             "resources": resources.__dict__, "array": array.__dict__}
    spec_hash = hashlib.sha256(canonical_json(canon).encode()).hexdigest()[:12]
    return ExperimentSpec(name=name, task=task.strip(), resources=resources, array=array, defaults=dict(defaults),
                          grid={k: list(v) for k, v in grid.items()}, zip=zips, exclude=exclude, spec_path=path,
                          description=description, spec_hash=spec_hash, lines=lines, base_path=base)


def _check_param_name(key: Any, e: Any, section: str) -> None:
    if not isinstance(key, str) or not PARAM_RE.match(key):
        raise e(f"invalid parameter name {key!r}: start with a letter or '_', then letters, digits, '_', '.', '-'",
                section, key)


def _build_resources(raw: Any, e: Any) -> Resources:
    if not isinstance(raw, dict):
        raise e(f"must be a mapping, got {type(raw).__name__}", "resources")
    for key in raw:
        if key not in RESOURCE_KEYS:
            raise e(f"unknown resource '{key}'; valid: {', '.join(RESOURCE_KEYS)}", "resources", key)
    out: dict[str, Any] = {}
    for key, minimum in (("gpus", 0), ("cpus", 1), ("time_min", 1)):
        if key in raw:
            v = raw[key]
            if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
                raise e(f"must be an integer >= {minimum}, got {v!r}", "resources", key)
            out[key] = v
    if raw.get("mem_gb") is not None:
        v = raw["mem_gb"]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
            raise e(f"must be a positive number of GiB, got {v!r}", "resources", "mem_gb")
        out["mem_gb"] = v
    for key in ("constraint", "partition", "account", "qos", "gres"):
        if raw.get(key) is not None:
            if not isinstance(raw[key], str) or not raw[key].strip():
                raise e(f"must be a non-empty string, got {raw[key]!r}", "resources", key)
            out[key] = raw[key].strip()
    if raw.get("extra") is not None:
        extra = raw["extra"]
        if not isinstance(extra, dict) or not all(isinstance(k, str) for k in extra):
            raise e("must be a mapping of sbatch option -> value", "resources", "extra")
        out["extra"] = {k: "" if v is None else str(v) for k, v in extra.items()}
    return Resources(**out)


def _build_array(raw: Any, params: set[str], e: Any) -> ArraySettings:
    if not isinstance(raw, dict):
        raise e(f"must be a mapping, got {type(raw).__name__}", "array")
    for key in raw:
        if key not in ARRAY_KEYS:
            raise e(f"unknown array setting '{key}'; valid: {', '.join(ARRAY_KEYS)}", "array", key)
    out: dict[str, Any] = {}
    for key in ("parallelism", "runs_per_task"):
        if key in raw:
            v = raw[key]
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise e(f"must be an integer >= 1, got {v!r}", "array", key)
            out[key] = v
    if raw.get("group_by") is not None:
        g = raw["group_by"]
        g = [g] if isinstance(g, str) else g
        if not isinstance(g, list) or not all(isinstance(k, str) for k in g):
            raise e(f"must be a parameter name or a list of them, got {raw['group_by']!r}", "array", "group_by")
        for k in g:
            if k not in params:
                raise e(f"unknown parameter '{k}'; parameters: {', '.join(sorted(params))}", "array", "group_by")
        out["group_by"] = tuple(g)
    return ArraySettings(**out)


def _build_zip(raw: Any, grid: dict[str, Any], e: Any) -> list[dict[str, list[Any]]]:
    if not isinstance(raw, list):
        raise e("must be a list of groups, each a mapping of parameter -> list (lists of equal length)", "zip")
    groups: list[dict[str, list[Any]]] = []
    seen: set[str] = set(grid)
    for i, group in enumerate(raw):
        if not isinstance(group, dict) or not group:
            raise e("each zip group must be a non-empty mapping of parameter -> list", "zip", i)
        lengths = {}
        for k, v in group.items():
            _check_param_name(k, e, "zip")
            if k in seen:
                raise e(f"parameter '{k}' already varies in grid or another zip group", "zip", i, k)
            seen.add(k)
            if not isinstance(v, list) or not v:
                raise e(f"must be a non-empty list, got {v!r}", "zip", i, k)
            lengths[k] = len(v)
        if len(set(lengths.values())) > 1:
            raise e(f"lists in a zip group must have equal lengths, got {lengths}", "zip", i)
        groups.append({k: list(v) for k, v in group.items()})
    return groups


def _build_exclude(raw: Any, params: set[str], e: Any) -> list[dict[str, list[Any]]]:
    if not isinstance(raw, list):
        raise e("must be a list of rules, each a mapping of parameter -> value or list of values", "exclude")
    rules: list[dict[str, list[Any]]] = []
    for i, rule in enumerate(raw):
        if not isinstance(rule, dict) or not rule:
            raise e("each rule must be a non-empty mapping of parameter -> value or list", "exclude", i)
        for k in rule:
            if k not in params:
                raise e(f"unknown parameter '{k}'; parameters: {', '.join(sorted(map(str, params)))}",
                        "exclude", i, k)
        rules.append({k: (list(v) if isinstance(v, list) else [v]) for k, v in rule.items()})
    return rules
