"""Releases of a published dataset: `mmcurate refresh JOB --dataset DIR`.

    DIR/latest                   the newest complete release's name (v0003), written last
    DIR/releases/v0001/          manifest.json (every shard of the release, earlier ones by
                                 reference: names relative to DIR), samples.parquet (every
                                 sample: key -> shard), inputs.parquet (every input processed
                                 so far, with the key of its listing row), job.yaml,
                                 release.json (version, mmcurate's version, the diff)
    DIR/shards/                  the shards of every release, numbered on across releases,
                                 never rewritten
    DIR/index/<index>/v0001/     what each release's dedup stages kept (appended per release)
    DIR/work/v0002/              the run directory of the release being made

A refresh runs the job on the inputs not yet published (an input is its listing row:
source, sizes and modification times, captions; a changed row is a new input), with
every dedup stage given the indexes of all earlier releases (`against`: old samples
are never hashed again and always survive), and the shard stage numbering on from the
last release's shards. Then it publishes: shards and indexes copied in, the release
folder written under a temporary name and renamed, `latest` replaced last. Killed at
any point, it leaves `latest` and every release as they were; the rerun resumes the
same work directory (its segments are fingerprinted) and publishes the same release.
The dataset is held by the run lock: a second refresh at once is refused.
"""
from __future__ import annotations

import hashlib
import json
import re
from typing import Any

import pyarrow as pa
import yaml

from . import __version__, fs
from .job import Job, JobError
from .lock import RunLock

VERSION = re.compile(r"^v(\d{4,})$")
NOT_CONTENT = ("ordinal", "sample_id", "reject")  # listing columns that say where, not what


def version_name(n: int) -> str:
    return f"v{n:04d}"


def latest(dataset: str) -> str | None:
    """The newest complete release's name, or None for a dataset with none."""
    path = fs.join(dataset, "latest")
    if not fs.exists(path):
        return None
    name = fs.read_bytes(path).decode().strip()
    if not VERSION.match(name):
        raise ValueError(f"{path}: {name[:40]!r} is not a release name (v0001, v0002, ...)")
    return name


def resolve(spec: str) -> tuple[str, str]:
    """`DIR` (its latest release) or `DIR@v0003` -> (dataset, release name)."""
    dataset, _, name = spec.rpartition("@") if "@" in spec.rsplit("/", 1)[-1] else (spec, "", "")
    name = name or latest(dataset)
    if name is None:
        raise ValueError(f"{dataset}: no release yet (no 'latest' file)")
    if not VERSION.match(name) or not fs.exists(fs.join(dataset, "releases", name, "manifest.json")):
        raise ValueError(f"{dataset}: no release {name!r}")
    return dataset, name


def shard_urls(spec: str) -> list[str]:
    """Every shard file of a release, as paths or URLs a reader opens."""
    dataset, name = resolve(spec)
    manifest = json.loads(fs.read_bytes(fs.join(dataset, "releases", name, "manifest.json")))
    return [fs.join(dataset, s["name"]) for s in manifest["shards"]]


def input_key(row: dict[str, Any]) -> str:
    """What a listed input is: its listing row without where it stands in the listing."""
    content = {k: (v.hex() if isinstance(v, bytes) else v) for k, v in sorted(row.items()) if k not in NOT_CONTENT}
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _release(dataset: str, name: str) -> dict[str, Any]:
    return json.loads(fs.read_bytes(fs.join(dataset, "releases", name, "release.json")))


def _table(dataset: str, name: str | None, file: str) -> pa.Table | None:
    if name is None:
        return None
    return fs.read_parquet(fs.join(dataset, "releases", name, file))


def _sink(job: Job):
    sink = job.stages[-1]
    if sink.kind != "sink" or "first_shard" not in type(sink.params).model_fields:
        raise JobError(f"{job.source}: a refresh publishes shards: the job must end with shard_webdataset")
    return sink


def _dedup_stages(job: Job) -> list:
    fields = lambda s: type(s.params).model_fields  # noqa: E731
    return [s for s in job.stages if "against" in fields(s) and "index_name" in fields(s)]


def prepare(job: Job, dataset: str, earlier: list[str], first_shard: int) -> Job:
    """The job as this release runs it: dedup against every earlier release, shards numbered on."""
    for stage in _dedup_stages(job):
        index = stage.params.index_name or stage.name
        found = [fs.join(dataset, "index", index, v) for v in earlier if fs.exists(fs.join(dataset, "index", index, v))]
        stage.params = stage.params.model_copy(update={"against": [*stage.params.against, *found]})
    sink = _sink(job)
    sink.params = sink.params.model_copy(update={"first_shard": first_shard})
    return job


def refresh(job: Job, dataset: str, ray_address: str | None = None, log=print) -> dict[str, Any]:
    """Make the next release of `dataset` from the job's inputs; returns its release.json."""
    from .runner import Runner

    fs.makedirs(dataset)
    with RunLock(dataset):
        before = latest(dataset)
        number = int(VERSION.match(before).group(1)) + 1 if before else 1
        name = version_name(number)
        if fs.exists(fs.join(dataset, "releases", name, "manifest.json")):  # published, `latest` not yet moved
            fs.write_bytes(fs.join(dataset, "latest"), f"{name}\n".encode())
            log(f"[mmcurate] {dataset}: release {name} was complete; latest now points to it")
            return _release(dataset, name)
        earlier = [version_name(i) for i in range(1, number)]
        prior = _release(dataset, before) if before else {"next_shard": 0, "shards": []}
        sink = _sink(job)
        known = _table(dataset, before, "inputs.parquet")
        published = set(known.column("input_key").to_pylist()) if known is not None else set()
        skipped = [0]

        def new_inputs(batch: pa.Table) -> pa.Table:
            rows = batch.to_pylist()
            keep = [input_key(r) not in published or r.get("reject") is not None for r in rows]
            skipped[0] += keep.count(False)
            return batch.filter(pa.array(keep, pa.bool_()))

        work = fs.join(dataset, "work", name)
        prepare(job, dataset, earlier, prior["next_shard"])
        log(f"[mmcurate] {dataset}: making release {name} in {work}"
            + (f" (after {before}: {len(published)} inputs published)" if before else " (the first: a full run)"))
        summary = Runner(job, work, ray_address=ray_address, log=log, inputs_filter=new_inputs).run()
        info = publish(job, dataset, name, before, work, summary, skipped[0], sink)
        log(f"[mmcurate] {dataset}: published {name}: {info['diff']['samples_added']} samples added in "
            f"{len(info['diff']['shards_added'])} shards, {info['diff']['inputs_skipped']} published inputs skipped; "
            f"{info['samples']} samples in {len(info['shards'])} shards")
        return info


def _copy_tree(src: str, dst: str) -> None:
    base = fs.resolve(src)[1].rstrip("/") + "/"
    for f in fs.list_files(src, recursive=True):
        relative = f.path[len(base):]
        fs.write_bytes(fs.join(dst, relative), fs.read_bytes(fs.join(src, relative)))


def publish(job: Job, dataset: str, name: str, before: str | None, work: str, summary: dict[str, Any],
            skipped: int, sink) -> dict[str, Any]:
    """Copy the new shards and indexes in, write the release, then move `latest`."""
    from .rundir import RunDir

    rd = RunDir(work)
    made = json.loads(fs.read_bytes(fs.join(rd.shards, "manifest.json")))
    new = []
    for shard in made["shards"]:
        stem = shard["name"][:-len(".tar")]
        for suffix in (".tar", ".parquet", "_stats.json"):
            target = fs.join(dataset, "shards", stem + suffix)
            data = fs.read_bytes(fs.join(rd.shards, stem + suffix))
            if fs.exists(target) and fs.read_bytes(target) != data:
                raise RuntimeError(f"{target} exists with other bytes: shards are never rewritten")
            fs.write_bytes(target, data)
        new.append({**shard, "name": f"shards/{shard['name']}"})
    for stage in _dedup_stages(job):
        index = stage.params.index_name or stage.name
        made_index = fs.join(rd.root, "index", index)
        if stage.params.write_index and fs.exists(made_index):
            target = fs.join(dataset, "index", index, name)
            tmp = fs.join(dataset, "index", index, f".tmp-{name}")
            fs.delete(tmp)
            _copy_tree(made_index, tmp)
            fs.replace_dir(tmp, target)

    prior = json.loads(fs.read_bytes(fs.join(dataset, "releases", before, "manifest.json"))) if before else \
        {"shards": []}
    shards = prior["shards"] + new
    samples = [_table(dataset, before, "samples.parquet")] if before else []
    for shard in new:
        keys = fs.read_parquet(fs.join(dataset, shard["name"][:-len(".tar")] + ".parquet")).column("__key__")
        samples.append(pa.table({"sample_id": keys, "shard": pa.array([shard["name"]] * len(keys), pa.string()),
                                 "release": pa.array([name] * len(keys), pa.string())}))
    samples_table = pa.concat_tables([t for t in samples if t is not None]) if samples else pa.table(
        {"sample_id": pa.array([], pa.string()), "shard": pa.array([], pa.string()),
         "release": pa.array([], pa.string())})
    listed = fs.read_parquet_dir(rd.segment_dir("00-listing"))
    keys = [input_key(r) for r in listed.to_pylist()] if listed is not None else []
    inputs = pa.table({"source_uri": listed.column("source_uri") if listed is not None else pa.array([], pa.string()),
                       "input_key": pa.array(keys, pa.string()),
                       "release": pa.array([name] * len(keys), pa.string())})
    old_inputs = _table(dataset, before, "inputs.parquet")
    inputs = pa.concat_tables([old_inputs, inputs]) if old_inputs is not None else inputs
    diff = {"inputs_new": len(keys), "inputs_skipped": skipped, "samples_added": sum(s["samples"] for s in new),
            "shards_added": [s["name"] for s in new], "samples_removed": 0,
            "rejected": {seg["segment"]: seg.get("rejected", {}) for seg in summary.get("segments", [])}}
    last = max([int(s["name"].rsplit("-", 1)[1][:-4]) for s in shards if s["name"].startswith(
        f"shards/{sink.params.name}-")], default=-1)
    info = {"version": name, "mmcurate": __version__, "previous": before, "samples": samples_table.num_rows,
            "shards": [s["name"] for s in shards], "next_shard": last + 1, "diff": diff}
    tmp = fs.join(dataset, "releases", f".tmp-{name}")
    fs.delete(tmp)
    fs.write_bytes(fs.join(tmp, "manifest.json"), json.dumps({"version": int(name[1:]), "shards": shards},
                                                             indent=1).encode())
    fs.write_parquet(fs.join(tmp, "samples.parquet"), samples_table)
    fs.write_parquet(fs.join(tmp, "inputs.parquet"), inputs)
    fs.write_bytes(fs.join(tmp, "job.yaml"), yaml.safe_dump(job.to_dict(), sort_keys=False).encode())
    fs.write_bytes(fs.join(tmp, "release.json"), json.dumps(info, indent=1).encode())
    fs.replace_dir(tmp, fs.join(dataset, "releases", name))  # manifest.json last: a release with one is whole
    fs.write_bytes(fs.join(dataset, "latest"), f"{name}\n".encode())  # last: the release is out
    return info
