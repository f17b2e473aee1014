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
The dataset is held by the run lock: a second refresh at once is refused. A global
stage's data-dependent decision (filter_clip_score's top `fraction`) is stated as
parameters (its cut as a `threshold`) in release.json and applied by every later
release: old decisions stand, new samples meet the same bar.

Takedowns (`mmcurate takedown DIR --ids/--sources/--content FILE`) are recorded in
DIR/takedowns.jsonl and stay: every later refresh rejects listed inputs they name
(`taken_down`, so the audit still balances) and leaves the samples they cover out of
its release, writing new shards in place of only the shards that held them. Their
entries stay in the dedup indexes, so exact and near copies of taken-down content
offered again are removed as duplicates. Earlier releases keep their files unless
`--purge`, which rewrites the affected shards in place (same names) and every
release's manifest and sample index, and lists what it changed. A source entry matches
that URI and everything from it (`uri#child`), one ending in `/` every URI under it, and
a bare domain (`example.com`) every http(s) URL of that host or its subdomains.
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


def is_dataset(spec: str) -> bool:
    """A published dataset (`DIR` with releases, or `DIR@v0003`) rather than a shard pattern."""
    if any(c in spec for c in "{}*?["):
        return False
    base = spec.rsplit("@", 1)[0] if VERSION.match(spec.rsplit("@", 1)[-1]) else spec
    return fs.exists(fs.join(base, "latest")) or fs.exists(fs.join(base, "releases"))


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


def _decisions(job: Job, summary: dict[str, Any], before: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Decisions global stages stated (a fraction's cut as a threshold), by segment name;
    the earliest one stands."""
    made = {row["segment"]: row["decision"] for row in summary.get("segments", []) if row.get("decision")}
    return {**made, **before}


def prepare(job: Job, dataset: str, earlier: list[str], first_shard: int,
            decisions: dict[str, dict[str, Any]] | None = None) -> Job:
    """The job as this release runs it: dedup against every earlier release, shards numbered
    on, and the decisions of earlier releases' global stages (their cut, not a new one)."""
    from .runner import plan

    for seg in plan(job.stages):
        decision = (decisions or {}).get(seg.name)
        if decision and len(seg.stages) == 1:
            stage = seg.stages[0]
            stage.params = type(stage.params).model_validate({**stage.params.model_dump(), **decision})
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
        published_uris = set(known.column("source_uri").to_pylist()) if known is not None else set()
        taken = takedowns(dataset)
        skipped = [0]
        changed: set[str] = set()  # published sources whose listing row changed: new versions supersede them

        def new_inputs(batch: pa.Table) -> pa.Table:
            import schemas

            from . import ledger

            rows = batch.to_pylist()
            keep = [input_key(r) not in published or r.get("reject") is not None for r in rows]
            skipped[0] += keep.count(False)
            changed.update(r["source_uri"] for r, k in zip(rows, keep) if k and r["source_uri"] in published_uris)
            # a taken-down input never comes back: rejected, so that the audit still counts it
            rejects = [r.get("reject") if r.get("reject") or not taken.sample(r.get("sample_id"), r.get("source_uri"),
                                                                              None)
                       else ledger.reject("taken_down", f"{r.get('source_uri')}: named by a takedown")
                       for r, k in zip(rows, keep) if k]
            batch = batch.filter(pa.array(keep, pa.bool_()))
            return ledger.set_column(batch, "reject", pa.array(rejects, schemas.REJECT))

        work = fs.join(dataset, "work", name)
        prepare(job, dataset, earlier, prior["next_shard"], prior.get("decisions"))
        log(f"[mmcurate] {dataset}: making release {name} in {work}"
            + (f" (after {before}: {len(published)} inputs published)" if before else " (the first: a full run)"))
        prior_samples = _table(dataset, before, "samples.parquet")
        superseded: set[str] = set()

        def supersede() -> None:  # the listing is done: the changed inputs' earlier samples are known
            if changed and prior_samples is not None:
                for sid, uri in zip(prior_samples.column("sample_id").to_pylist(),
                                    prior_samples.column("source_uri").to_pylist()):
                    if uri and uri.split("#", 1)[0] in changed:
                        superseded.add(sid)
            for stage in _dedup_stages(job):
                stage.params = stage.params.model_copy(update={"superseded": sorted(superseded)})

        summary = Runner(job, work, ray_address=ray_address, log=log, inputs_filter=new_inputs,
                         after_listing=supersede).run()
        info = publish(job, dataset, name, before, work, summary, skipped[0], sink, taken, superseded,
                       _decisions(job, summary, prior.get("decisions", {})), prior_samples, known)
        log(f"[mmcurate] {dataset}: published {name}: {info['diff']['samples_added']} samples added in "
            f"{len(info['diff']['shards_added'])} shards, {info['diff']['inputs_skipped']} published inputs skipped; "
            f"{info['samples']} samples in {len(info['shards'])} shards")
        return info


SAMPLE_COLUMNS = [("sample_id", pa.string()), ("shard", pa.string()), ("release", pa.string()),
                  ("source_uri", pa.string()), ("content_sha256", pa.string())]


def _sample_rows(dataset: str | None, shard: str, name: str) -> pa.Table:
    """samples.parquet's rows for one shard: key, shard, release, source and content hash."""
    if dataset is None:
        return pa.schema(SAMPLE_COLUMNS).empty_table()
    index = fs.read_parquet(fs.join(dataset, shard[:-len(".tar")] + ".parquet"))
    n = index.num_rows
    column = lambda c: index.column(c).cast(pa.string()) if c in index.column_names else pa.nulls(n, pa.string())  # noqa: E731
    return pa.table({"sample_id": index.column("__key__"), "shard": pa.array([shard] * n, pa.string()),
                     "release": pa.array([name] * n, pa.string()), "source_uri": column("source_uri"),
                     "content_sha256": column("content_sha256")})


TAKEDOWNS = "takedowns.jsonl"


class Takedowns:
    """Every takedown recorded for a dataset, as one matcher."""

    def __init__(self, records: list[dict[str, Any]]):
        self.ids = {i for r in records for i in r.get("ids", [])}
        self.content = {c.lower() for r in records for c in r.get("content", [])}
        sources = [x for r in records for x in r.get("sources", [])]
        self.domains = {x.lower().strip(".") for x in sources if "/" not in x and ":" not in x}
        self.prefixes = tuple(x for x in sources if x.endswith("/") and x.lower() not in self.domains)
        self.exact = {x for x in sources if x.lower() not in self.domains and not x.endswith("/")}

    def __bool__(self) -> bool:
        return bool(self.ids or self.content or self.domains or self.prefixes or self.exact)

    def source(self, uri: str | None) -> bool:
        if not uri:
            return False
        base = uri.split("#", 1)[0]
        if base in self.exact or uri in self.exact or (self.prefixes and base.startswith(self.prefixes)):
            return True
        if self.domains and base.lower().startswith(("http://", "https://")):
            host = base.split("/", 3)[2].rsplit("@", 1)[-1].split(":", 1)[0].lower()
            return any(host == d or host.endswith("." + d) for d in self.domains)
        return False

    def sample(self, sample_id: str | None, uri: str | None, content: str | None) -> bool:
        return sample_id in self.ids or self.source(uri) or (content or "").lower() in self.content


def takedowns(dataset: str) -> Takedowns:
    path = fs.join(dataset, TAKEDOWNS)
    lines = fs.read_bytes(path).decode().splitlines() if fs.exists(path) else []
    return Takedowns([json.loads(line) for line in lines if line.strip()])


def record_takedown(dataset: str, ids: list[str] = (), sources: list[str] = (), content: list[str] = (),
                    purge: bool = False, log=print) -> dict[str, Any]:
    """Record a takedown (it applies at the next refresh); with purge, also rewrite every
    published release now. Returns the record, with what a purge changed."""
    from datetime import datetime, timezone

    entry = {"time": datetime.now(timezone.utc).isoformat(timespec="seconds"), "ids": sorted(set(ids)),
             "sources": sorted(set(sources)), "content": sorted(set(content)), "purge": purge}
    if not (entry["ids"] or entry["sources"] or entry["content"]):
        raise ValueError("a takedown names sample ids, sources or content hashes")
    fs.makedirs(dataset)
    with RunLock(dataset):
        path = fs.join(dataset, TAKEDOWNS)
        old = fs.read_bytes(path) if fs.exists(path) else b""
        fs.write_bytes(path, old + (json.dumps(entry) + "\n").encode())
        log(f"[mmcurate] {dataset}: takedown recorded ({len(entry['ids'])} ids, {len(entry['sources'])} sources, "
            f"{len(entry['content'])} content hashes); the next refresh enacts it")
        if purge:
            entry["purged"] = purge_releases(dataset, takedowns(dataset), log)
    return entry


def _rewrite_shard(dataset: str, old: str, new: str, removed: set[str]) -> dict[str, Any] | None:
    """Shard `old` without the samples in `removed`, written as `new` (tar, index, stats);
    its manifest entry, or None when nothing is left (then nothing is written)."""
    import os
    import tarfile
    import tempfile

    stem_old, stem_new = old[:-len(".tar")], new[:-len(".tar")]
    index = fs.read_parquet(fs.join(dataset, stem_old + ".parquet"))
    keep = pa.array([k not in removed for k in index.column("__key__").to_pylist()], pa.bool_())
    index = index.filter(keep)
    if not index.num_rows:
        return None
    members: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="mmcurate-shard-") as work:
        local = os.path.join(work, "shard.tar")
        filesystem, path = fs.resolve(fs.join(dataset, old))
        with filesystem.open_input_stream(path) as raw, tarfile.open(fileobj=raw, mode="r|") as src, \
                tarfile.open(local, mode="w", format=tarfile.USTAR_FORMAT) as dst:  # streamed: shards are big
            for member in src:
                key, _, ext = member.name.partition(".")
                if member.isfile() and key not in removed:
                    dst.addfile(member, src.extractfile(member))
                    members[ext] = members.get(ext, 0) + 1
        entry = {"name": new, "samples": index.num_rows, "bytes": os.path.getsize(local), "sha256": _sha256(local)}
        fs.write_parquet(fs.join(dataset, stem_new + ".parquet"), index)
        fs.write_bytes(fs.join(dataset, stem_new + "_stats.json"), json.dumps(
            {**entry, "name": new.rsplit("/", 1)[-1], "first_key": index.column("__key__")[0].as_py(),
             "members": members, "index": stem_new.rsplit("/", 1)[-1] + ".parquet"}, indent=1).encode())
        _copy_file(local, fs.join(dataset, new))  # the tar last: its index and stats are there before it
    return entry


def purge_releases(dataset: str, taken: Takedowns, log=print) -> list[dict[str, Any]]:
    """Every published release without what `taken` covers: affected shards rewritten in
    place, manifests and sample indexes updated. Returns what changed, shard by shard."""
    names = sorted(d.path.rstrip("/").rsplit("/", 1)[-1] for d in _release_dirs(dataset))
    samples = {n: _table(dataset, n, "samples.parquet") for n in names}
    hit = {}
    for n, table in samples.items():
        for sid, shard, uri, content in zip(*(table.column(c).to_pylist() for c in
                                             ("sample_id", "shard", "source_uri", "content_sha256"))):
            if taken.sample(sid, uri, content):
                hit.setdefault(shard, set()).add(sid)
    changed, entries = [], {}
    for shard, removed in sorted(hit.items()):
        entries[shard] = _rewrite_shard(dataset, shard, shard, removed)
        if entries[shard] is None:
            for suffix in (".tar", ".parquet", "_stats.json"):
                fs.delete(fs.join(dataset, shard[:-len(".tar")] + suffix))
        changed.append({"shard": shard, "removed": sorted(removed), "left": entries[shard] and entries[shard]["samples"]})
        log(f"[mmcurate] purge: {shard}: {len(removed)} samples removed"
            + (", shard deleted" if entries[shard] is None else ""))
    gone = {sid for removed in hit.values() for sid in removed}
    for n in names:
        path = fs.join(dataset, "releases", n, "manifest.json")
        manifest = json.loads(fs.read_bytes(path))
        manifest["shards"] = [entries.get(s["name"], s) if s["name"] in entries else s for s in manifest["shards"]]
        manifest["shards"] = [s for s in manifest["shards"] if s is not None]
        table = samples[n]
        fs.write_parquet(fs.join(dataset, "releases", n, "samples.parquet"), table.filter(
            pa.array([sid not in gone for sid in table.column("sample_id").to_pylist()], pa.bool_())))
        fs.write_bytes(path, json.dumps(manifest, indent=1).encode())
    return changed


def _release_dirs(dataset: str) -> list:
    fsys, path = fs.resolve(fs.join(dataset, "releases"))
    import pyarrow.fs as pafs

    if fsys.get_file_info(path).type != pafs.FileType.Directory:
        return []
    return [i for i in fsys.get_file_info(pafs.FileSelector(path)) if i.type == pafs.FileType.Directory
            and VERSION.match(i.path.rstrip("/").rsplit("/", 1)[-1])]


def _number(shard: str) -> int:
    """A shard's number: `shards/name-000012.tar` -> 12."""
    return int(shard.rsplit("-", 1)[1][:-len(".tar")])


CHUNK = 8 << 20


def _sha256(uri: str) -> str:
    filesystem, path = fs.resolve(uri)
    digest = hashlib.sha256()
    with filesystem.open_input_stream(path) as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _copy_file(src: str, dst: str) -> None:
    """A file copied in chunks (local or object store; a shard may be gigabytes), appearing
    whole: under a temporary name then moved locally, an object store shows it once closed."""
    sfs, spath = fs.resolve(src)
    dfs, dpath = fs.resolve(dst)
    local = fs.is_local(dst)
    target = dpath + ".tmp-copy" if local else dpath
    if local:
        dfs.create_dir(dpath.rpartition("/")[0], recursive=True)
    with sfs.open_input_stream(spath) as f, dfs.open_output_stream(target) as out:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            out.write(chunk)
    if local:
        dfs.move(target, dpath)


def _copy_tree(src: str, dst: str) -> None:
    base = fs.resolve(src)[1].rstrip("/") + "/"
    for f in fs.list_files(src, recursive=True):
        relative = f.path[len(base):]
        _copy_file(fs.join(src, relative), fs.join(dst, relative))


def publish(job: Job, dataset: str, name: str, before: str | None, work: str, summary: dict[str, Any],
            skipped: int, sink, taken: Takedowns, superseded: set[str] = frozenset(),
            decisions: dict[str, Any] | None = None, prior_samples: pa.Table | None = None,
            prior_inputs: pa.Table | None = None) -> dict[str, Any]:
    """Copy the new shards and indexes in, write the release, then move `latest`
    (prior_samples, prior_inputs: the previous release's indexes, as refresh read them)."""
    from .rundir import RunDir

    rd = RunDir(work)
    made = json.loads(fs.read_bytes(fs.join(rd.shards, "manifest.json")))
    new = []
    for shard in made["shards"]:
        stem = shard["name"][:-len(".tar")]
        for suffix in ("_stats.json", ".parquet", ".tar"):  # the tar last
            target = fs.join(dataset, "shards", stem + suffix)
            if suffix == ".tar" and fs.exists(target):  # a rerun after a kill: it must be the very same
                if _sha256(target) != shard["sha256"]:
                    raise RuntimeError(f"{target} exists with other bytes: shards are never rewritten")
                continue
            _copy_file(fs.join(rd.shards, stem + suffix), target)
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
    samples = [prior_samples] if prior_samples is not None else []
    for shard in new:
        samples.append(_sample_rows(dataset, shard["name"], name))
    samples_table = pa.concat_tables([t for t in samples if t is not None]) if samples else _sample_rows(None, "", name)
    # takedowns: the samples they cover leave; only the shards that held them are written anew
    # and the earlier samples of changed inputs leave (superseded: their new versions are in this release)
    removed: dict[str, set[str]] = {}
    superseded_n = 0
    for sid, shard, rel, uri, content in zip(*(samples_table.column(c).to_pylist() for c in
                                              ("sample_id", "shard", "release", "source_uri", "content_sha256"))):
        old = rel != name and sid in superseded
        if old or (taken and taken.sample(sid, uri, content)):
            removed.setdefault(shard, set()).add(sid)
            superseded_n += old
    number = max([_number(s["name"]) for s in shards], default=-1) + 1
    replaced = {}
    for shard, gone in sorted(removed.items()):
        fresh = f"shards/{sink.params.name}-{number:06d}.tar"
        replaced[shard] = _rewrite_shard(dataset, shard, fresh, gone)
        number += replaced[shard] is not None
    if replaced:
        shards = [replaced.get(s["name"], s) for s in shards]
        shards = [s for s in shards if s is not None]
        moved = {s: e["name"] for s, e in replaced.items() if e is not None}
        samples_table = samples_table.filter(pa.array(  # by shard: a new version may share its old id
            [sid not in removed.get(shard, ()) for sid, shard in zip(samples_table.column("sample_id").to_pylist(),
                                                                     samples_table.column("shard").to_pylist())],
            pa.bool_()))
        samples_table = samples_table.set_column(1, "shard", pa.array(
            [moved.get(s, s) for s in samples_table.column("shard").to_pylist()], pa.string()))
    listed = fs.read_parquet_dir(rd.segment_dir("00-listing"))
    keys = [input_key(r) for r in listed.to_pylist()] if listed is not None else []
    inputs = pa.table({"source_uri": listed.column("source_uri") if listed is not None else pa.array([], pa.string()),
                       "input_key": pa.array(keys, pa.string()),
                       "release": pa.array([name] * len(keys), pa.string())})
    inputs = pa.concat_tables([prior_inputs, inputs]) if prior_inputs is not None else inputs
    diff = {"inputs_new": len(keys), "inputs_skipped": skipped, "samples_added": sum(s["samples"] for s in new),
            "shards_added": [s["name"] for s in new], "samples_removed": sum(len(g) for g in removed.values()),
            "samples_superseded": superseded_n,
            "shards_replaced": {old: (e and e["name"]) for old, e in replaced.items()},
            "rejected": {seg["segment"]: seg.get("rejected", {}) for seg in summary.get("segments", [])}}
    last = max([_number(s["name"]) for s in shards] + [number - 1], default=-1)
    info = {"version": name, "mmcurate": __version__, "previous": before, "samples": samples_table.num_rows,
            "shards": [s["name"] for s in shards], "next_shard": last + 1, "diff": diff,
            "decisions": decisions or {}}
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
