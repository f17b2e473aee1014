"""Job files: YAML validated against the stages' own parameter models.

    name: demo
    output: runs/demo
    ray: {num_cpus: 2}
    stages:
      - ingest_table: {source: rows.parquet}
      - shard_webdataset: {samples_per_shard: 64}
"""
from __future__ import annotations

import reprlib
from dataclasses import dataclass, field
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .stage import Column, Stage, get_stage_class, registry


class JobError(ValueError):
    """A job file that cannot run; the message names the file, stage and key."""


MAX_JOB_BYTES = 1 << 20  # a job file is a page of YAML, not a data set
MAX_NODES = 100_000  # YAML nodes once aliases are expanded; a "billion laughs" file has billions
STALL_TIMEOUT = 1800.0  # seconds without progress before a segment is stopped
TOP_LEVEL = ("name", "output", "ray", "storage", "stall_timeout", "stages")

_short = reprlib.Repr()
_short.maxlevel, _short.maxstring, _short.maxother = 3, 80, 80
_short.maxlist = _short.maxdict = _short.maxtuple = _short.maxset = 6


def shown(value: Any) -> str:
    """A bounded repr for messages: a value from a job file may be huge or deeply nested."""
    return _short.repr(value)


class RaySpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    address: str | None = Field(None, description="join this cluster (else RAY_ADDRESS, else embedded)")
    num_cpus: int | None = Field(None, ge=1, description="logical CPUs of the embedded Ray")
    object_store_mb: int = Field(2048, ge=64, description="object store of the embedded Ray (MiB)")


class StorageSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    endpoint_url: str | None = Field(None, description="S3 endpoint (MinIO, moto, ...); else AWS_ENDPOINT_URL_S3")
    region: str | None = Field(None, description="S3 region; else AWS_REGION")

    def apply(self) -> None:
        """Into the environment, where pyarrow.fs and the Ray workers pick it up."""
        import os

        if self.endpoint_url:
            os.environ["AWS_ENDPOINT_URL_S3"] = self.endpoint_url
        if self.region:
            os.environ["AWS_REGION"] = self.region


@dataclass
class Job:
    name: str
    stages: list[Stage]
    output: str | None = None
    ray: RaySpec = field(default_factory=RaySpec)
    storage: StorageSpec = field(default_factory=StorageSpec)
    source: str = "<inline>"
    stall_timeout: float = STALL_TIMEOUT

    def columns(self) -> dict[str, Column]:
        """What the job's stages declare they add, by column (the last declaration wins)."""
        return {c.name: c for s in self.stages for c in s.adds()}

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "output": self.output,
            "ray": self.ray.model_dump(exclude_none=True),
            "storage": self.storage.model_dump(exclude_none=True),
            "stall_timeout": self.stall_timeout,
            "stages": [{s.name: s.params.model_dump(mode="json")} for s in self.stages],
        }


def _explain(where: str, stage: str, cls: type[Stage], err: ValidationError) -> str:
    allowed = ", ".join(cls.Params.model_fields)
    lines = [f"{where}: stage '{stage}' has invalid parameters:"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(parameters)"
        if e["type"] == "extra_forbidden":
            lines.append(f"  - unknown key '{key}'; allowed keys: {allowed}")
        elif e["type"] == "missing":
            lines.append(f"  - missing required key '{key}'")
        else:
            lines.append(f"  - '{key}': {e['msg']} (got {shown(e.get('input'))})")
    return "\n".join(lines)


def build_stage(name: str, params: dict[str, Any] | None, where: str = "job") -> Stage:
    try:
        cls = get_stage_class(name)
    except KeyError as e:
        raise JobError(f"{where}: {e.args[0]}") from None
    if params is not None and not isinstance(params, dict):
        raise JobError(f"{where}: parameters of stage '{name}' must be a mapping, got {shown(params)}")
    try:
        return cls(params or {})
    except ValidationError as e:
        raise JobError(_explain(where, name, cls, e)) from None


def parse_job(data: Any, source: str = "<inline>") -> Job:
    if not isinstance(data, dict):
        raise JobError(f"{source}: a job file is a mapping with 'name' and 'stages'")
    unknown = set(map(str, data)) - set(TOP_LEVEL)
    if unknown:
        raise JobError(f"{source}: unknown top-level key(s) {shown(sorted(unknown))}; "
                       f"allowed: {', '.join(TOP_LEVEL)}")
    raw_stages = data.get("stages")
    if not isinstance(raw_stages, list) or not raw_stages:
        raise JobError(f"{source}: 'stages' must be a non-empty list of {{stage_name: {{params}}}}")
    stages = []
    for i, entry in enumerate(raw_stages, 1):
        if isinstance(entry, str):
            entry = {entry: {}}
        if not isinstance(entry, dict) or len(entry) != 1:
            raise JobError(f"{source}: stages[{i}] must be one {{stage_name: {{params}}}} mapping, got {shown(entry)}; "
                           f"known stages: {', '.join(registry())}")
        (name, params), = entry.items()
        stages.append(build_stage(name, params, where=f"{source}: stages[{i}]"))
    if not isinstance(data.get("ray") or {}, dict):
        raise JobError(f"{source}: 'ray' must be a mapping such as {{num_cpus: 4}}, got {shown(data.get('ray'))}")
    try:
        ray_spec = RaySpec(**(data.get("ray") or {}))
    except ValidationError as e:
        raise JobError(f"{source}: 'ray': {e}") from None
    try:
        storage = StorageSpec(**(data.get("storage") or {}))
    except (ValidationError, TypeError) as e:
        raise JobError(f"{source}: 'storage': {e}") from None
    stall = data.get("stall_timeout", STALL_TIMEOUT)
    if isinstance(stall, bool) or not isinstance(stall, (int, float)) or stall < 0:
        raise JobError(f"{source}: 'stall_timeout' must be a number of seconds >= 0 (0 = off), got {shown(stall)}")
    output = data.get("output")
    if output is not None and not isinstance(output, str):
        raise JobError(f"{source}: 'output' must be a path, got {shown(output)}")
    _check_order(stages, source)
    check_chain(stages, source)
    return Job(name=str(data.get("name") or "job")[:200], stages=stages, output=output,
               ray=ray_spec, storage=storage, source=source, stall_timeout=float(stall))


def _check_order(stages: list[Stage], source: str) -> None:
    if not stages[0].is_source:
        raise JobError(f"{source}: the first stage ('{stages[0].name}') must be a source stage "
                       "(an ingest_* stage) that lists the inputs")
    for s in stages[1:]:
        if s.is_source:
            raise JobError(f"{source}: '{s.name}' is a source stage and can only come first")
    for s in stages[:-1]:
        if s.kind == "sink":
            raise JobError(f"{source}: '{s.name}' writes the final output and must be the last stage")
    indexes: dict[str, int] = {}  # <output>/index/<name>/ is one stage's
    for i, s in enumerate(stages):
        if getattr(s.params, "write_index", False):
            name = getattr(s.params, "index_name", "") or s.name
            if name in indexes:
                raise JobError(f"{source}: stages[{indexes[name]}] and stages[{i}] would both write the index "
                               f"'{name}'; give one of them another index_name (or write_index: false)")
            indexes[name] = i


def _expanded_size(root: yaml.Node) -> int:
    """Nodes the document would have with every alias expanded, counted without expanding
    (each node once, memoised); a recursive alias counts as too many."""
    sizes: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes and sizes[id(node)] >= 0:
            continue
        kids = [] if isinstance(node, yaml.ScalarNode) else \
            [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else list(node.value)
        if children_done:
            sizes[id(node)] = min(MAX_NODES + 1, 1 + sum(sizes[id(k)] for k in kids))
            continue
        if sizes.get(id(node)) == -1:
            return MAX_NODES + 1  # a node inside itself: recursive aliases
        sizes[id(node)] = -1
        stack.append((node, True))
        stack.extend((k, False) for k in kids if sizes.get(id(k), -2) < 0)
    return sizes[id(root)]


def stages_of_run(root: str) -> list[Stage]:
    """The stages of a run, rebuilt from its job.yaml ([] when that cannot be done)."""
    from . import fs

    try:
        data = load_yaml(fs.read_bytes(fs.join(root, "job.yaml")).decode(), f"{root}/job.yaml")
        data.pop("limit", None)
        return parse_job(data, f"{root}/job.yaml").stages
    except Exception:  # noqa: BLE001 - a run without a readable job is still a table
        return []


IDENTITY_COLUMNS = ("sample_id", "ordinal", "modality", "source_uri", "meta", "parent_id")


def _makers(column: str) -> list[str]:
    """Registered stages that add `column` with their default parameters (for the hint)."""
    found = []
    for name, cls in registry().items():
        try:
            stage = object.__new__(cls)
            stage.params = cls.Params.model_construct()
            if any(c.name == column for c in cls.adds(stage)):
                found.append(name)
        except Exception:  # noqa: BLE001 - a stage whose declarations need its required parameters
            continue
    return found


def check_chain(stages: list[Stage], source: str = "job", listed: set[str] | None = None) -> dict[str, Column]:
    """Every column a stage reads is added by a stage before it (or listed by an open
    source, once its listing is known); returns the declared columns. A stage's
    binary columns must declare a format: they become shard members."""
    declared: dict[str, Column] = {}
    available: set[str] | None = set(IDENTITY_COLUMNS) | (listed or set())
    for i, stage in enumerate(stages, 1):
        if stage.open_columns and listed is None:
            available = None  # a table's columns: checked after its listing
        for column in stage.reads():
            if available is not None and column not in available:
                makers = [m for m in _makers(column) if m != stage.name]
                hint = f"; {', '.join(makers)} adds it: put it before" if makers else \
                    "; no stage adds it (is it a column of your input?)"
                raise JobError(f"{source}: stages[{i}]: stage '{stage.name}' reads column '{column}', which no "
                               f"stage before it adds{hint}")
        for c in stage.adds():
            if c.kind in ("media", "text") and not c.format:
                raise JobError(f"{source}: stage '{stage.name}' adds {c.kind} column '{c.name}' without a format "
                               "(its member extension in the shards)")
            declared[c.name] = c
            if available is not None:
                available.add(c.name)
    return declared


def load_yaml(text: str, source: str) -> Any:
    """safe_load, after refusing what would blow up once loaded: a file over
    MAX_JOB_BYTES, or aliases that expand to more than MAX_NODES nodes (a "billion laughs")."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_JOB_BYTES:
        raise JobError(f"{source}: {len(text)} characters; a job file may have at most {MAX_JOB_BYTES} bytes")
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        if root is not None and _expanded_size(root) > MAX_NODES:
            raise JobError(f"{source}: its YAML aliases (*name) expand to more than {MAX_NODES} values "
                           "(or refer to themselves); write the values out")
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise JobError(f"{source}: not valid YAML: {str(e)[:500]}") from None
    except RecursionError:
        raise JobError(f"{source}: nested too deeply to be a job file") from None


def load_job(path: str) -> Job:
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_JOB_BYTES + 1)
    except FileNotFoundError:
        raise JobError(f"{path}: job file not found") from None
    except IsADirectoryError:
        raise JobError(f"{path}: is a folder, not a job file") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise JobError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    return parse_job(load_yaml(text, path), source=path)
