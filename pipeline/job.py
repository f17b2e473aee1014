"""Job files: YAML validated against the stages' own parameter models.

    name: demo
    output: runs/demo
    ray: {num_cpus: 2}
    stages:
      - ingest_image_text: {source: runs/demo-data/manifest.jsonl}
      - shard_webdataset: {samples_per_shard: 64}
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .stage import Stage, get_stage_class, registry


class JobError(ValueError):
    """A job file that cannot run; the message names the file, stage and key."""


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

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "output": self.output,
            "ray": self.ray.model_dump(exclude_none=True),
            "storage": self.storage.model_dump(exclude_none=True),
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
            lines.append(f"  - '{key}': {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def build_stage(name: str, params: dict[str, Any] | None, where: str = "job") -> Stage:
    try:
        cls = get_stage_class(name)
    except KeyError as e:
        raise JobError(f"{where}: {e.args[0]}") from None
    if params is not None and not isinstance(params, dict):
        raise JobError(f"{where}: parameters of stage '{name}' must be a mapping, got {params!r}")
    try:
        return cls(params or {})
    except ValidationError as e:
        raise JobError(_explain(where, name, cls, e)) from None


def parse_job(data: Any, source: str = "<inline>") -> Job:
    if not isinstance(data, dict):
        raise JobError(f"{source}: a job file is a mapping with 'name' and 'stages'")
    unknown = set(data) - {"name", "output", "ray", "storage", "stages"}
    if unknown:
        raise JobError(f"{source}: unknown top-level key(s) {sorted(unknown)}; "
                       "allowed: name, output, ray, storage, stages")
    raw_stages = data.get("stages")
    if not isinstance(raw_stages, list) or not raw_stages:
        raise JobError(f"{source}: 'stages' must be a non-empty list of {{stage_name: {{params}}}}")
    stages = []
    for i, entry in enumerate(raw_stages, 1):
        if isinstance(entry, str):
            entry = {entry: {}}
        if not isinstance(entry, dict) or len(entry) != 1:
            raise JobError(f"{source}: stages[{i}] must be one {{stage_name: {{params}}}} mapping, got {entry!r}; "
                           f"known stages: {', '.join(registry())}")
        (name, params), = entry.items()
        stages.append(build_stage(name, params, where=f"{source}: stages[{i}]"))
    if not isinstance(data.get("ray") or {}, dict):
        raise JobError(f"{source}: 'ray' must be a mapping such as {{num_cpus: 4}}, got {data.get('ray')!r}")
    try:
        ray_spec = RaySpec(**(data.get("ray") or {}))
    except ValidationError as e:
        raise JobError(f"{source}: 'ray': {e}") from None
    try:
        storage = StorageSpec(**(data.get("storage") or {}))
    except (ValidationError, TypeError) as e:
        raise JobError(f"{source}: 'storage': {e}") from None
    _check_order(stages, source)
    return Job(name=str(data.get("name") or "job"), stages=stages, output=data.get("output"),
               ray=ray_spec, storage=storage, source=source)


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


def load_job(path: str) -> Job:
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise JobError(f"{path}: job file not found") from None
    except yaml.YAMLError as e:
        raise JobError(f"{path}: not valid YAML: {e}") from None
    return parse_job(data, source=path)
