"""The stage contract: parameters, resources, and one function from a batch to rows.

A stage reads as "parameters, then one function from a batch to kept and
rejected rows". Its compute is a plain object usable without Ray; the runner
decides tasks vs actors from the declared resources.
"""
from __future__ import annotations

import ast
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterator, Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

ENTRY_POINT_GROUP = "mmcurate.stages"


class SourceError(ValueError):
    """A source that cannot be used at all (wrong columns, nothing there): a user error."""


class StageSetupFailed(RuntimeError):
    """A stage could not get ready on a worker (its model did not load, no GPU where it
    asked for one): no row can pass it, so the job stops with this message."""


class Params(BaseModel):
    """Base of every stage's parameters: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RowParams(Params):
    """Parameters of a row stage: its CPU share per worker can be set from the job."""

    num_cpus: float | None = Field(None, ge=0, le=1024, description="logical CPUs per worker (fractional allowed); "
                                                                   "default: the stage's own")


# Parameters that place work, not decide results: they never change a fingerprint.
PLACEMENT = {"num_cpus", "num_gpus", "concurrency"}


class Resources(BaseModel):
    """What one worker of a stage needs; the runner turns this into Ray options."""

    model_config = ConfigDict(extra="forbid")
    num_cpus: float = Field(1.0, ge=0, description="CPUs per worker (fractional allowed)")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per worker (fractional allowed)")
    concurrency: int | None = Field(None, ge=1, description="actor pool size; None = tasks")
    batch_size: int = Field(64, ge=1, description="rows per call of process()")


@dataclass(frozen=True)
class Column:
    """A column a stage adds, and what it is. The job check, the shard writer and the
    report work from these declarations, so that the engine names no modality.

    kind "media":     bytes the stage makes; stored once, carried as a reference; a
                      member `<key>.<format>` in the shards (format: an extension such
                      as "flac", or "@column": per row, the value of that column)
    kind "text":      a string written as a member `<key>.<format>` ("txt")
    kind "embedding": a vector written as a member `<key>.<name>.npy`
    kind "metric":    a number worth a histogram in the report (`label`, with its unit)
    kind "value":     anything else; it goes into the sample's `.json`
    """

    name: str
    kind: Literal["media", "text", "embedding", "metric", "value"] = "value"
    format: str = ""
    label: str = ""
    preview: Callable[[bytes], bytes | None] | None = None  # media: a small picture of it (PNG/JPEG), for the report
    # media: a short excerpt a browser plays, as (MIME type, bytes), for the report's player
    excerpt: Callable[[bytes], tuple[str, bytes] | None] | None = None


class Stage:
    """Base class. Subclasses set `name`, `Params`, `kind` and implement one method.

    kind "row":    process(batch) -> rows (streams within a segment): each input row
                   comes back (kept, changed, or with a `reject`), or is replaced by
                   children rows (`ledger.children`) that carry its id as `parent_id`
    kind "global": run_global(dataset, ctx) -> dataset to write, or the counts of what it
                   wrote through ctx.writer (sees the whole dataset)
    kind "sink":   write(dataset, ctx) -> dict (ends the job, e.g. shards)
    A source stage (the first of a job) also implements list_inputs(), which
    yields the input rows with their identity assigned before any I/O.

    A stage declares the columns it reads (`reads`) and adds (`adds`); a job is
    checked against them before it runs, and media columns it reads arrive as bytes.
    """

    name: ClassVar[str]
    kind: ClassVar[Literal["row", "global", "sink"]] = "row"
    Params: ClassVar[type[Params]] = Params
    resources: ClassVar[Resources] = Resources()
    # A source whose columns are those of its input (a table): known after listing only.
    open_columns: ClassVar[bool] = False
    # Parameters of this stage that place or pace work but never change its rows.
    placement: ClassVar[frozenset[str]] = frozenset()
    # Reject reasons of this stage and the parameter that governs each: a run that rejects
    # most of its inputs for one of them says which knob to look at.
    reason_hints: ClassVar[dict[str, str]] = {}

    # Where the runner's media store is, for a stage that stores media itself (a long
    # recording, streamed to a file); None outside a run.
    media_store: Any = None

    def __init_subclass__(cls, **kwargs: Any):
        super().__init_subclass__(**kwargs)
        if cls.kind not in ("row", "global", "sink"):  # a subclass reusing the name for something else
            raise TypeError(f"{cls.__name__}.kind is {cls.kind!r}; a stage's kind is 'row', 'global' or 'sink'")

    def __init__(self, params: Params | dict | None = None, **overrides: Any):
        if isinstance(params, Params):
            params = params.model_dump()
        self.params = self.Params(**{**(params or {}), **overrides})
        self.resources = self.resources.model_copy()
        if getattr(self.params, "num_cpus", None) is not None:
            self.resources.num_cpus = self.params.num_cpus
        self._ready = False

    # -- declarations ----------------------------------------------------
    def reads(self) -> list[str]:
        """Columns this stage reads (a job is refused when no earlier stage adds one)."""
        return []

    def adds(self) -> list[Column]:
        """Columns this stage adds or rewrites, with what they are."""
        return []

    def streams(self) -> list[str]:
        """Media columns of reads() that the stage opens itself, by reference (a long
        recording, a video), instead of getting their bytes (pipeline.media.local_path)."""
        return []

    def report_sections(self, run_root: str, kept) -> list[dict[str, Any]]:
        """Extra sections for `mmcurate report`: [{"title", "html"}] (kept: a table of
        the last rows the run kept, with `meta`, the metric columns and report_columns())."""
        return []

    # A global stage whose decision depends on the data (a top fraction) may set, in run_global,
    # the parameters that reproduce it on other data ({"threshold": 0.31, "fraction": None}):
    # kept in the segment's marker, and a refresh gives them to the next releases.
    decision: dict[str, Any] | None = None

    def report_columns(self) -> list[str]:
        """Columns of the kept rows that report_sections needs beyond meta and metrics."""
        return []

    # -- lifecycle -------------------------------------------------------
    def setup(self) -> None:
        """Load models or open resources; called once per worker before process()."""

    def ensure_setup(self) -> None:
        if not self._ready:
            self.setup()
            self._ready = True

    # -- the one function ------------------------------------------------
    def process(self, batch: pa.Table) -> pa.Table:
        """Row-wise stages: live rows in; the same rows out, with new columns and
        a `reject` struct column (pipeline.ledger.with_rejects) where rows are rejected."""
        raise TypeError(f"stage {self.name!r} of kind {self.kind!r} has no process()")

    def prepare(self, batch: pa.Table) -> pa.Table:
        """Optional CPU-side step of a stateful stage (decode, resize), which the runner
        runs as Ray tasks ahead of the actor pool so that the accelerator never waits.
        It may add temporary columns (named `__tmp_*`, dropped before anything is written)
        and reject rows; process() must also work on batches that were not prepared."""
        return batch

    @property
    def has_prepare(self) -> bool:
        return type(self).prepare is not Stage.prepare

    def list_inputs(self, limit: int | None = None) -> Iterator[pa.Table]:
        raise TypeError(f"stage {self.name!r} is not a source stage")

    @property
    def is_source(self) -> bool:
        return type(self).list_inputs is not Stage.list_inputs

    @property
    def stateful(self) -> bool:
        """Stateful stages (a model to load) run as an actor pool."""
        return self.resources.concurrency is not None or self.resources.num_gpus > 0

    def media_roots(self) -> list[str]:
        """Where media references that a source lists may point (besides the run's own
        media store); a reference elsewhere is rejected at listing."""
        return []

    def external_inputs(self) -> list[str]:
        """Files or folders the stage reads besides its rows (a model directory, an
        earlier run's index). Their listing is part of the fingerprint, so that a
        retrained model or a grown index reruns the segments that used them."""
        return []

    def fingerprint_parts(self) -> dict[str, str]:
        """What decides the output, part by part: the parameters (not the placement
        ones), the code the stage runs (its module and every project module it imports,
        transitively) and its external inputs. `mmcurate plan` names the part that changed."""
        params = {k: v for k, v in self.params.model_dump(mode="json").items()
                  if k not in PLACEMENT and k not in self.placement}
        return {"parameters": _short_hash([self.name, params]), "code": code_digest(type(self).__module__)[:16],
                "inputs": _short_hash([listing_digest(p) for p in self.external_inputs()])}

    def fingerprint(self) -> str:
        """Changes when what decides the output changes (fingerprint_parts)."""
        return _short_hash(self.fingerprint_parts())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params!r})"


class PrepareStep(Stage):
    """A stage's prepare() as a stage of its own (CPU tasks, no model)."""

    kind = "row"

    def __init__(self, stage: Stage):
        self.stage, self.name = stage, f"{stage.name}.prepare"
        self.params, self._ready = stage.params, True
        self.resources = Resources(num_cpus=stage.resources.num_cpus, batch_size=stage.resources.batch_size)

    def process(self, batch: pa.Table) -> pa.Table:
        return self.stage.prepare(batch)

    def reads(self) -> list[str]:
        return self.stage.reads()

    def adds(self) -> list[Column]:  # what prepare() rewrites in place is declared by the stage
        return self.stage.adds()

    def fingerprint(self) -> str:
        return self.stage.fingerprint() + ".prepare"


TEMPORARY = "__tmp_"  # columns named __tmp_* live within a segment only


def drop_temporary(table: pa.Table) -> pa.Table:
    return table.drop_columns([c for c in table.column_names if c.startswith(TEMPORARY)])


def _short_hash(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def listing_digest(uri: str) -> str:
    """Names, sizes and modification times under a file or folder (local or s3://)."""
    from . import fs

    filesystem, path = fs.resolve(uri)
    info = filesystem.get_file_info(path)
    if info.type.name == "NotFound":
        return f"{uri}: missing"
    files = fs.list_files(uri, recursive=True) if info.type.name == "Directory" else [info]
    h = hashlib.sha256(uri.encode())
    for f in files:
        h.update(f"\0{f.path[len(path):]}\0{f.size}\0{f.mtime_ns}".encode())
    return h.hexdigest()


# Top-level packages of this project: their modules count as code a stage runs.
PROJECT_PACKAGES = ("pipeline", "stages", "schemas", "jobs")
# Engine modules that steer a run but never shape its rows: a change to them reruns nothing.
RUN_CONTROL = {"pipeline.lock", "pipeline.watchdog", "pipeline.progress", "pipeline.job", "pipeline.cli",
               "pipeline.report"}


@functools.lru_cache(maxsize=None)
def _module_file(name: str) -> str | None:
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    return spec.origin if spec and spec.origin and spec.origin.endswith(".py") else None


@functools.lru_cache(maxsize=None)
def _imports(name: str) -> tuple[str, ...]:
    """Project modules that module `name` imports (anywhere in it), and its parent packages."""
    file = _module_file(name)
    if file is None:
        return ()
    with open(file, "rb") as f:
        tree = ast.parse(f.read(), filename=file)
    package = name if file.endswith("__init__.py") else name.rpartition(".")[0]
    roots = set(PROJECT_PACKAGES) | {name.partition(".")[0]}
    found: set[str] = set()
    for node in _module_level(tree.body):
        if isinstance(node, ast.Import):
            candidates = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            candidates = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        found.update(c for c in candidates if c.partition(".")[0] in roots and _module_file(c))
    parts = name.split(".")
    found.update(".".join(parts[:i]) for i in range(1, len(parts)) if _module_file(".".join(parts[:i])))
    found.discard(name)
    return tuple(sorted(found - RUN_CONTROL))


def _module_level(body: list) -> Iterator[ast.stmt]:
    """The statements run on import (imports inside functions are for what the function does)."""
    for node in body:
        yield node
        if isinstance(node, (ast.If, ast.Try)):
            yield from _module_level(node.body + node.orelse + getattr(node, "finalbody", []) +
                                     [s for h in getattr(node, "handlers", []) for s in h.body])


def _code_of(file: str) -> bytes:
    """A module's code without its comments and docstrings: rewording them reruns nothing."""
    with open(file, "rb") as f:
        tree = ast.parse(f.read(), filename=file)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and \
                isinstance(getattr(body[0], "value", None), ast.Constant) and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree).encode()


@functools.lru_cache(maxsize=None)
def code_digest(module: str) -> str:
    """sha256 over the source of a module and every project module it imports, transitively."""
    seen, todo = set(), [module]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(_imports(name))
    h = hashlib.sha256()
    for name in sorted(seen):
        file = _module_file(name)
        if file:
            h.update(name.encode() + b"\0" + _code_of(file))
    return h.hexdigest()


# -- registry ------------------------------------------------------------
_extra: dict[str, type[Stage]] = {}


def register(cls: type[Stage]) -> type[Stage]:
    """Register a stage class in-process (entry points are the normal way)."""
    _extra[cls.name] = cls
    return cls


def registry() -> dict[str, type[Stage]]:
    """Every stage, found through the `mmcurate.stages` entry-point group."""
    found: dict[str, type[Stage]] = {}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        cls = ep.load()
        if not (isinstance(cls, type) and issubclass(cls, Stage)):
            raise TypeError(f"entry point {ep.name} = {ep.value} is not a Stage subclass")
        found[ep.name] = cls
    found.update(_extra)
    return dict(sorted(found.items()))


def get_stage_class(name: str) -> type[Stage]:
    stages = registry()
    if name not in stages:
        raise KeyError(f"unknown stage {name!r}; known stages: {', '.join(stages)}")
    return stages[name]


def describe_params(cls: type[Stage]) -> list[dict[str, Any]]:
    """Name, type, default, bounds and description of each parameter."""
    rows = []
    for key, field in cls.Params.model_fields.items():
        bounds = []
        for m in field.metadata:
            for attr, sym in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
                if getattr(m, attr, None) is not None:
                    bounds.append(f"{sym}{getattr(m, attr)}")
        ann = field.annotation
        type_name = getattr(ann, "__name__", None) or str(ann).replace("typing.", "")
        rows.append(
            {
                "name": key,
                "type": type_name,
                "default": None if field.is_required() else field.get_default(call_default_factory=True),
                "required": field.is_required(),
                "bounds": " ".join(bounds),
                "description": field.description or "",
            }
        )
    return rows
