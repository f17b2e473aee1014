"""The stage contract: parameters, resources, and one function from a batch to rows.

A stage reads as "parameters, then one function from a batch to kept and
rejected rows". Its compute is a plain object usable without Ray; the runner
decides tasks vs actors from the declared resources.
"""
from __future__ import annotations

import glob
import hashlib
import importlib.metadata
import inspect
import json
import os
import sys
from typing import Any, ClassVar, Iterator, Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

ENTRY_POINT_GROUP = "mmcurate.stages"


class Params(BaseModel):
    """Base of every stage's parameters: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Resources(BaseModel):
    """What one worker of a stage needs; the runner turns this into Ray options."""

    model_config = ConfigDict(extra="forbid")
    num_cpus: float = Field(1.0, ge=0, description="CPUs per worker (fractional allowed)")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per worker (fractional allowed)")
    concurrency: int | None = Field(None, ge=1, description="actor pool size; None = tasks")
    batch_size: int = Field(64, ge=1, description="rows per call of process()")


class Stage:
    """Base class. Subclasses set `name`, `Params`, `kind` and implement one method.

    kind "row":    process(batch) -> batch (row-wise; streams within a segment)
    kind "global": run_global(dataset, ctx) -> dataset to write, or the counts of what it
                   wrote through ctx.writer (sees the whole dataset)
    kind "sink":   write(dataset, ctx) -> dict (ends the job, e.g. shards)
    A source stage (the first of a job) also implements list_inputs(), which
    yields the input rows with their identity assigned before any I/O.
    """

    name: ClassVar[str]
    kind: ClassVar[Literal["row", "global", "sink"]] = "row"
    Params: ClassVar[type[Params]] = Params
    resources: ClassVar[Resources] = Resources()
    # Bulky media columns: column -> function(bytes) -> small thumbnail bytes or None.
    # The runner uses them so that rejects stay small.
    thumbnails: ClassVar[dict[str, Any]] = {}

    def __init__(self, params: Params | dict | None = None, **overrides: Any):
        if isinstance(params, Params):
            params = params.model_dump()
        self.params = self.Params(**{**(params or {}), **overrides})
        self.resources = self.resources.model_copy()
        self._ready = False

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

    def fingerprint(self) -> str:
        """Changes when the parameters or the code change: the stage's module, the
        modules beside it (its helpers) and the record schemas."""
        return hashlib.sha256(json.dumps([self.name, self.params.model_dump(mode="json"),
                                          _code_digest(type(self))]).encode()).hexdigest()[:16]

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

    def fingerprint(self) -> str:
        return self.stage.fingerprint() + ".prepare"


TEMPORARY = "__tmp_"  # columns named __tmp_* live within a segment only


def drop_temporary(table: pa.Table) -> pa.Table:
    return table.drop_columns([c for c in table.column_names if c.startswith(TEMPORARY)])


def _code_digest(cls: type) -> str:
    module = inspect.getmodule(cls)
    files = {inspect.getsourcefile(module)}
    folder = os.path.dirname(files.pop())
    files = sorted(glob.glob(os.path.join(folder, "*.py")))
    schemas = sys.modules.get("schemas")
    if schemas is not None and getattr(schemas, "__file__", None):
        files.append(schemas.__file__)
    h = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            h.update(fh.read())
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
