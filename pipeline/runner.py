"""Runs a job on Ray Data, segment by segment, with resume and the ledger's guarantees.

A job is cut into segments: the input listing (made on the driver, before any
I/O), runs of consecutive row-wise stages (streamed through Ray Data in one
pass), and each global or sink stage alone. A segment is committed atomically
with a fingerprint of its stages, the code and everything upstream; a rerun
skips every segment whose fingerprint is unchanged.
"""
from __future__ import annotations

import atexit
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import yaml

import schemas
from schemas import EXPANDED

from . import __version__, fs, ledger, media
from .job import Job
from .lock import RunLock
from .rundir import RunDir, SegmentFiles
from .job import JobError, check_chain
from .stage import Column, PrepareStep, Stage, StageSetupFailed, code_digest, drop_temporary
from .progress import Progress
from .watchdog import Watchdog, stalled, wait

LISTING_ROWS_PER_PART = 256  # small parts = enough blocks to keep every worker busy
# Parts grow with the listing (a 64th of what came before, at most this many rows): a
# million rows make ~330 parts, not 3,900 whose every read and write costs the same.
LISTING_ROWS_PER_PART_MAX = 16_384


def part_rows(listed: int) -> int:
    """Rows of the next listing part, when `listed` rows came before it."""
    return min(LISTING_ROWS_PER_PART_MAX, max(LISTING_ROWS_PER_PART, listed // 64))
STORAGE_ENV = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION")
IO_CPUS = 0.25  # CPU share of the tasks that only read parts or write a segment's files


# -- Ray -------------------------------------------------------------------
# Workers show no progress bars of their own (model loading, downloads): progress is the runner's.
QUIET_WORKERS = {"TQDM_DISABLE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error"}


class _Unless(logging.Filter):
    """Drops log records that a user cannot act on."""

    def __init__(self, *fragments: str):
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(f in record.getMessage() or f in record.pathname for f in self.fragments)


def quiet_ray() -> None:
    """Ray's own chatter off the run's stderr: its Data progress lines (the runner reports
    progress with the stages' names) and the token-auth notice of an embedded Ray."""
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.enable_operator_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # its notices are about its own machinery
    _quiet_token_notice()


def _quiet_token_notice() -> None:
    # An embedded Ray turns token authentication on (good) and says so on every start (noise).
    logging.getLogger("ray._private.authentication.authentication_token_setup").addFilter(
        _Unless("Token authentication is enabled for this Ray cluster"))


def connect_ray(address: str | None = None, num_cpus: int | None = None, object_store_mb: int = 2048) -> None:
    """Join a cluster (address or RAY_ADDRESS) or start an embedded Ray that we own."""
    import ray

    if ray.is_initialized():
        quiet_ray()
        return
    # Workers read and write the same storage as the driver: hand them its S3 endpoint
    # and region (credentials come from each node's own environment).
    storage_env = {k: os.environ[k] for k in STORAGE_ENV if k in os.environ}
    runtime_env = {"env_vars": {**storage_env, **QUIET_WORKERS}}
    address = address or os.environ.get("RAY_ADDRESS")
    _quiet_token_notice()
    if address:
        ray.init(address=address, log_to_driver=True, runtime_env=runtime_env)
        quiet_ray()
        return
    # Short path: Ray's socket names must fit in 107 bytes.
    tmp = tempfile.mkdtemp(prefix="mmcurate-ray-", dir=os.environ.get("MMCURATE_RAY_TMPDIR", "/tmp"))
    # Task results under 100 KB normally live in the driver's own memory, kept with the
    # lineage of every shuffle round: 1.3 GB more driver at a million rows. In the object
    # store instead the driver stays flat (a 7% slower run at 200,000 rows).
    ray.init(num_cpus=num_cpus, _temp_dir=tmp, object_store_memory=object_store_mb << 20,
             include_dashboard=False, configure_logging=True, logging_level="WARNING", runtime_env=runtime_env,
             _system_config={"max_direct_call_object_size": 1024})
    quiet_ray()

    def _stop() -> None:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)

    atexit.register(_stop)


# -- segments --------------------------------------------------------------
@dataclass
class Segment:
    index: int
    kind: str  # "listing" | "row" | "global" | "sink"
    stages: list[Stage]

    @property
    def name(self) -> str:
        label = "listing" if self.kind == "listing" else "+".join(s.name for s in self.stages)
        return f"{self.index:02d}-{label}"


def plan(stages: list[Stage]) -> list[Segment]:
    """Listing, then consecutive row stages grouped; global and sink stages alone."""
    segments = [Segment(0, "listing", [stages[0]])]
    for stage in stages:
        if stage.is_source and type(stage).process is Stage.process:
            continue  # a source whose listed rows are the data: nothing to load
        last = segments[-1]
        if stage.kind == "row" and last.kind == "row":
            last.stages.append(stage)
        else:
            segments.append(Segment(len(segments), stage.kind, [stage]))
    return segments


class NotEnoughResources(RuntimeError):
    """A segment needs more CPUs or GPUs at once than the cluster has: it would wait forever."""


def segment_needs(seg: Segment) -> dict[str, Any]:
    """What a segment holds at once to make progress: its actor pools all together,
    plus the largest task beside them; and the largest single worker (it must fit a node)."""
    if seg.kind in ("global", "sink"):  # shuffles run as 1-CPU tasks (pipeline.shuffle)
        return {"cpus": 1.0, "gpus": 0.0, "worker": (1.0, 0.0), "parts": "shuffle tasks of 1 CPU"}
    pools = [s for s in seg.stages if s.stateful]
    if not pools:
        need = max(s.resources.num_cpus for s in seg.stages)
        return {"cpus": need, "gpus": 0.0, "worker": (need, 0.0), "parts": f"tasks of {need:g} CPU"}
    tasks = [IO_CPUS] + [s.resources.num_cpus for s in seg.stages if not s.stateful or s.has_prepare]
    held = [(s.name, s.resources.concurrency or 1, s.resources.num_cpus, s.resources.num_gpus) for s in pools]
    cpus = sum(n * c for _, n, c, _ in held) + max(tasks)
    gpus = sum(n * g for _, n, _, g in held)
    worker = (max([c for _, _, c, _ in held] + tasks), max(g for _, _, _, g in held))
    parts = ", ".join(f"{name} {n} x {c:g} CPU" + (f" + {g:g} GPU" if g else "") for name, n, c, g in held)
    return {"cpus": cpus, "gpus": gpus, "worker": worker,
            "parts": f"actor pools {parts}, and tasks of up to {max(tasks):g} CPU beside them"}


def check_resources(seg: Segment) -> None:
    """Refuse a segment that cannot make progress on this cluster (Ray would wait forever)."""
    import ray

    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    if not nodes:
        return
    need = segment_needs(seg)
    for kind, key in (("CPU", "cpus"), ("GPU", "gpus")):
        total = sum(n.get(kind, 0.0) for n in nodes)
        largest = max(n.get(kind, 0.0) for n in nodes)
        single = need["worker"][0 if kind == "CPU" else 1]
        if need[key] > total + 1e-9 or single > largest + 1e-9:
            where = f"the largest node has {largest:g}" if len(nodes) == 1 or single > largest + 1e-9 else \
                f"the cluster has {total:g} ({len(nodes)} nodes, the largest {largest:g})"
            wanted = need[key] if need[key] > total + 1e-9 else single
            raise NotEnoughResources(
                f"segment {seg.name} needs {wanted:g} {kind}s at once ({need['parts']}); {where}. "
                f"Lower the stages' num_cpus, num_gpus or concurrency, or give Ray more {kind}s.")


def _ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return sink.getvalue().to_pybytes()


def _hash(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def batch_key(table: pa.Table) -> str:
    """Order-independent name of a batch: a hash of its sorted sample ids."""
    ids = pc.sort_indices(table, [("sample_id", "ascending")])
    ordered = pc.take(table.column("sample_id"), ids)
    return hashlib.sha1("\n".join(ordered.to_pylist()).encode()).hexdigest()[:16]


# -- one stage on one batch, with the ledger's guarantees --------------------
_WORKER_STAGES: dict[str, Stage] = {}  # stages set up in this worker process
BORN = "__tmp_born"  # 1 on a child made in this segment (the ledger's balance counts them)
WRITTEN = "__tmp_media_written"  # media bytes a batch wrote to the store (on one row of it)


def _setup_failed(error: BaseException, segment: str) -> StageSetupFailed | None:
    """The StageSetupFailed behind an error from Ray, if any. An actor whose constructor
    raised comes back as ActorDiedError, which keeps only the traceback's text."""
    mark = f"{StageSetupFailed.__name__}: "
    for _ in range(20):
        if error is None:
            return None
        text = str(error)
        if isinstance(error, StageSetupFailed) or mark in text:
            said = text.rsplit(mark, 1)[-1].splitlines()[0] if mark in text else text
            return StageSetupFailed(f"segment {segment}: {said}")
        error = getattr(error, "cause", None) or error.__cause__ or error.__context__
    return None


class StageCall:
    """Applies one row-wise stage to a batch.

    Rows that left the stream upstream pass through untouched. The media columns the
    stage reads arrive as bytes, and those it adds are stored and become references.
    A row comes back as itself, or is replaced by children: the parent is then
    recorded as expanded. If the stage raises, the batch is re-run row by row so that
    only the failing rows are rejected (`error:<ExceptionType>`). If a batch kills its
    worker, Ray retries the task; a marker left in the crash journal by the dead
    attempt makes the retry go row by row, and a row whose own marker survives a crash
    is rejected as `error:WorkerDied` instead of being run a third time.
    Used as an instance (Ray tasks) or as a class (actor pools).
    """

    def __init__(self, stage: Stage, journal: str, key: str, media_root: str):
        self.stage, self.journal, self.key, self.media_root = stage, journal, key, media_root

    def _ready_stage(self) -> Stage:
        stage = _WORKER_STAGES.get(self.key)
        if stage is None:
            try:
                self.stage.ensure_setup()
            except Exception as e:  # noqa: BLE001 - said once, plainly, by the driver (Runner._run_watched)
                raise StageSetupFailed(f"{self.stage.name} could not start on a worker: {type(e).__name__}: "
                                       f"{ledger.without_bytes(str(e))}") from None
            stage = _WORKER_STAGES[self.key] = self.stage
        return stage

    def __call__(self, batch: pa.Table) -> pa.Table:
        live, dead = ledger.split_live(batch)
        if live.num_rows == 0:
            return batch
        out = self._guarded(self._ready_stage(), live)
        return pa.concat_tables([out, dead], promote_options="permissive") if dead.num_rows else out

    def _guarded(self, stage: Stage, live: pa.Table) -> pa.Table:
        # Keyed by the stage's fingerprint: two stages of one name in a segment keep apart.
        marker = fs.join(self.journal, f"{self.key}-{batch_key(live)}")
        if fs.exists(marker):
            out = self._row_by_row(stage, live, marker)
        else:
            fs.write_bytes(marker, b"")
            try:
                out = self._run(stage, live)
            except Exception:  # noqa: BLE001 - isolate the failing rows below
                out = self._row_by_row(stage, live, marker)
        fs.delete(marker)
        return out

    def _run(self, stage: Stage, table: pa.Table) -> pa.Table:
        streamed = set(stage.streams())
        refs = [c for c in stage.reads() if c in table.column_names and media.is_ref(table.schema.field(c).type)
                and c not in streamed]
        given = media.resolve(table, refs)
        stage.media_store = media.Store(self.media_root)
        out = stage.process(given)
        out = ledger.stamp_stage(ledger.ensure_reject_column(out), stage.name)
        added = {c.name for c in stage.adds() if c.kind == "media"}
        store = media.Store(self.media_root)
        out, kept_written = _keep_media(stage, out, table, given, [c for c in refs if c not in added], store)
        out, written = media.store(out, [*added, *refs], store)
        written += kept_written
        out = _with_lineage(stage, table, out)
        before = out.column(WRITTEN).to_pylist() if WRITTEN in out.column_names else [None] * out.num_rows
        return ledger.set_column(out, WRITTEN, pa.array([(before[0] or 0) + written] + before[1:], pa.int64()))

    def _row_by_row(self, stage: Stage, live: pa.Table, marker: str) -> pa.Table:
        outs = []
        for i in range(live.num_rows):
            row = live.slice(i, 1)
            row_marker = f"{marker}-{row.column('sample_id')[0].as_py()}"
            if fs.exists(row_marker):
                why = ledger.reject("error:WorkerDied", f"{stage.name}: the worker process died while "
                                    "processing this row (exit, crash or out of memory)")
                outs.append(ledger.stamp_stage(ledger.with_rejects(row, [why]), stage.name))
                continue
            fs.write_bytes(row_marker, b"")
            try:
                outs.append(self._run(stage, row))
            except Exception as e:  # noqa: BLE001 - every exception becomes a reject
                where = traceback.extract_tb(e.__traceback__)[-1]
                detail = (f"{stage.name}: {type(e).__name__}: {ledger.without_bytes(str(e))} "
                          f"(at {os.path.basename(where.filename)}:{where.lineno})")
                why = ledger.reject(f"error:{type(e).__name__}", detail)
                outs.append(ledger.stamp_stage(ledger.with_rejects(row, [why]), stage.name))
            fs.delete(row_marker)
        return pa.concat_tables(outs, promote_options="permissive")


def _with_lineage(stage: Stage, given: pa.Table, out: pa.Table) -> pa.Table:
    """Check what a row stage returned against what it was given, and record parents
    that became children as expanded. Each given row comes back once as itself, or
    is the parent of children (new, safe ids carrying its id as parent_id); nothing
    is dropped, doubled or made up. A row that came back as itself keeps its lineage
    (parent_id, and whether this segment made it) from what it was given, whatever
    columns the stage kept."""
    ids = given.column("sample_id").to_pylist()
    known = set(ids)
    out_ids = out.column("sample_id").to_pylist()
    parents = out.column("parent_id").to_pylist() if "parent_id" in out.column_names else [None] * len(out_ids)
    was_parent = dict(zip(ids, given.column("parent_id").to_pylist() if "parent_id" in given.column_names
                          else [None] * len(ids)))
    was_born = dict(zip(ids, given.column(BORN).to_pylist() if BORN in given.column_names else [None] * len(ids)))
    selves: Counter = Counter()
    children: Counter = Counter()
    born, lineage = [], []
    for sid, parent in zip(out_ids, parents):
        if sid in known:
            selves[sid] += 1
            born.append(was_born[sid])  # a child of an earlier stage of this segment stays counted once
            lineage.append(was_parent[sid])
        elif parent in known and isinstance(sid, str) and ledger.SAFE_ID.fullmatch(sid):
            children[parent] += 1
            born.append(1)
            lineage.append(parent)
        else:
            raise RuntimeError(f"stage {stage.name} returned a row {str(sid)[:60]!r} that is neither one it was "
                               "given nor a child of one (ledger.child makes children)")
    twice = [s for s, n in selves.items() if n > 1] + [s for s in selves if s in children]
    lost = known - set(selves) - set(children)
    if twice or lost or len(set(out_ids)) != len(out_ids):
        raise RuntimeError(f"stage {stage.name} returned other rows than it was given ({len(lost)} dropped, "
                           f"{len(twice)} twice or both kept and expanded): a row stage must return each row "
                           "once, or children in its place, and reject rows, never drop them")
    if any(v is not None for v in born):
        out = ledger.set_column(out, BORN, pa.array(born, pa.int64()))
    if any(v is not None for v in lineage):
        out = ledger.set_column(out, "parent_id", pa.array(lineage, pa.string()))
    if not children:
        return out
    expanded = given.filter(pc.is_in(given.column("sample_id"), value_set=pa.array(list(children), pa.string())))
    reasons = [ledger.reject(EXPANDED, str(children[s])) for s in expanded.column("sample_id").to_pylist()]
    expanded = ledger.stamp_stage(ledger.with_rejects(expanded, reasons), stage.name)
    return pa.concat_tables([out, expanded], promote_options="permissive")


def _keep_media(stage: Stage, out: pa.Table, table: pa.Table, given: pa.Table, columns: list[str],
                store: media.Store) -> tuple[pa.Table, int]:
    """Media columns a stage read but does not declare it changes get their references
    back, row by row (no rewrite); a child holding bytes keeps them, stored like new
    bytes. Bytes that differ from what the row was given mean an undeclared change: an error."""
    ids = out.column("sample_id").to_pylist()
    written = 0
    for name in columns:
        if name not in out.column_names:
            continue
        refs = dict(zip(table.column("sample_id").to_pylist(), table.column(name).to_pylist()))
        data = dict(zip(given.column("sample_id").to_pylist(), given.column(name).to_pylist()))
        values = out.column(name).to_pylist()
        for sid, value in zip(ids, values):
            if sid in data and value != data[sid] and not isinstance(value, dict):
                raise RuntimeError(f"stage {stage.name} changed media column {name!r} without declaring it in "
                                   "adds(): its change would be lost")
        stored = []
        for sid, value in zip(ids, values):
            if sid in refs:
                value = refs[sid]
            elif value is not None and not isinstance(value, dict):  # a child's own bytes
                value, n = store.put(value)
                written += n
            stored.append(value)
        out = ledger.set_column(out, name, pa.array(stored, schemas.MEDIA_REF))
    return out, written


def _actor_class(stage: Stage, journal: str, key: str, media_root: str) -> type:
    """StageCall for an actor pool, as a class named after the stage that holds its
    arguments: Ray then shows the stage's name, and keeps no constructor arguments in
    the object store (which it warns about for restartable actors). The model loads
    when the actor starts, not with the first batch: the pools of a segment then load
    theirs at once, while the stages before them run (measured on the demo's model
    segment, 11 rows on 2 CPUs: 19.7 s loading one after the other, 12.3 s at once)."""
    def __init__(self) -> None:
        StageCall.__init__(self, stage, journal, key, media_root)
        self._ready_stage()

    return type(stage.name, (StageCall,), {"__init__": __init__, "__qualname__": stage.name})


def _named_call(stage: Stage, journal: str, key: str, media_root: str) -> StageCall:
    """A StageCall whose class bears the stage's name (Ray Data names operators by it)."""
    named = type(stage.name, (StageCall,), {"__qualname__": stage.name})
    return named(stage, journal, key, media_root)


class SegmentWriter:
    """Last step of a segment: writes a block's kept, rejected and expanded rows, returns counts.

    File names come from the block's sample ids, so a retried task rewrites the
    same files instead of adding new ones, and it removes the files it has nothing
    for: an earlier attempt that rejected more (or fewer) rows leaves nothing behind.
    """

    def __init__(self, files: SegmentFiles):
        self.files = files

    def __call__(self, block: pa.Table) -> pa.Table:
        counts: Counter = Counter()
        kept_n = kept_bytes = expanded_n = 0
        born = int(pc.sum(block.column(BORN)).as_py() or 0) if BORN in block.column_names else 0
        written = int(pc.sum(block.column(WRITTEN)).as_py() or 0) if WRITTEN in block.column_names else 0
        block = drop_temporary(block)
        if block.num_rows:
            live, dead = ledger.split_live(block)
            rejected, expanded = ledger.split_expanded(dead)
            name = f"part-{batch_key(block)}.parquet"
            outputs = ((self.files.kept, live.drop_columns(["reject"]) if live.num_rows else None),
                       (self.files.rejects, ledger.flatten_rejects(rejected) if rejected.num_rows else None),
                       (self.files.expanded, ledger.flatten_expanded(expanded) if expanded.num_rows else None))
            for folder, table in outputs:
                if table is None:
                    fs.delete(fs.join(folder, name))
                else:
                    written += fs.write_parquet(fs.join(folder, name), table)
            kept_n, kept_bytes, expanded_n = live.num_rows, media.sizes(live), expanded.num_rows
            counts = ledger.reason_counts(outputs[1][1])
        return pa.table({"kept": [kept_n], "kept_bytes": [kept_bytes], "rejects": [json.dumps(counts)],
                         "expanded": [expanded_n], "born": [born], "written": [written]})


def _parts(segment_dir: str) -> list[str]:
    return [fs.join(segment_dir, i.path.rsplit("/", 1)[1]) for i in fs.list_files(segment_dir)
            if i.path.endswith(".parquet")]


MIN_SLICE_ROWS = 16  # a slice of a part smaller than this is not worth a task


def slices(parts: list[str], workers: int) -> list[tuple[str, int, int]]:
    """(part, first row, rows) pieces of the parts: whole parts when there are enough of
    them, else cut so that every worker has some (120 rows in one part on 2 CPUs made
    one busy CPU)."""
    rows = {p: _rows_of(p) for p in parts}
    total = sum(rows.values())
    if len(parts) >= 2 * workers or not total:
        return [(p, 0, n) for p, n in rows.items()]
    size = max(MIN_SLICE_ROWS, math.ceil(total / (2 * workers)))
    return [(p, start, min(size, n - start)) for p, n in rows.items() for start in range(0, n, size)]


def _rows_of(part: str) -> int:
    import pyarrow.parquet as pq

    filesystem, path = fs.resolve(part)
    return pq.read_metadata(path, filesystem=filesystem).num_rows


def _read_slice(piece: tuple[str, int, int]) -> pa.Table:
    part, start, n = piece
    table = fs.read_parquet(part)
    return table if (start, n) == (0, table.num_rows) else table.slice(start, n)


def _read_parts(batch: pa.Table) -> pa.Table:
    pieces = zip(*(batch.column(c).to_pylist() for c in ("part", "start", "rows")))
    return pa.concat_tables([_read_slice(p) for p in pieces], promote_options="permissive")


TASK_MAX_RETRIES = 64  # each crash of a poisoned row costs at most two attempts (see StageCall)


def _run_part(piece: tuple[str, int, int], calls: list[StageCall], writer: "SegmentWriter") -> dict[str, Any]:
    """One slice of a part through a chain of stateless stages, batch by batch, then written."""
    table = _read_slice(piece)
    rows = table.num_rows
    for call in calls:
        size = call.stage.resources.batch_size
        table = pa.concat_tables([call(table.slice(i, size)) for i in range(0, table.num_rows, size)],
                                 promote_options="permissive")
    return {**writer(table).to_pylist()[0], "rows": rows}


# -- the runner ---------------------------------------------------------------
@dataclass
class RunContext:
    """What a global or sink stage gets besides its dataset."""

    run: RunDir
    segment: str
    upstream_kept: int
    upstream_bytes: int  # media bytes the upstream rows reference
    tmp_dir: str
    parts: list[str] = field(default_factory=list)  # the upstream segment's parquet parts
    writer: "SegmentWriter | None" = None  # for global stages that write their own output
    columns: dict[str, Column] = field(default_factory=dict)  # what the job's stages declared they add
    phase: Any = print  # reports a step of a global stage ("components round 3")
    check_lock: Any = lambda: None  # raises when the run lock is no longer ours: call before publishing


class Runner:
    def __init__(self, job: Job, output: str, ray_address: str | None = None, limit: int | None = None,
                 log=print, until: str | None = None, start: str | None = None, inputs_filter=None,
                 after_listing=None):
        self.job, self.limit, self.log = job, limit, log
        self.inputs_filter = inputs_filter  # listed inputs -> those to process (a refresh skips the published)
        self.after_listing = after_listing  # called once the inputs are known, before any stage is fingerprinted
        self.run_dir = RunDir(output)
        self.ray_address = ray_address or job.ray.address
        self.segments = plan(job.stages)
        self.columns = job.columns()
        self.until = self.segment_of(until) if until else len(self.segments) - 1
        self.start = self.segment_of(start) if start else None
        # The engine's own code is part of every segment's fingerprint.
        self.engine = code_digest(__name__)

    def segment_of(self, stage: str) -> int:
        """The index of the segment that holds a stage (--until / --from)."""
        for seg in self.segments:
            if stage in [s.name for s in seg.stages]:
                return seg.index
        raise JobError(f"no stage {stage!r} in this job; its stages: {', '.join(s.name for s in self.job.stages)}")

    def fingerprint(self, seg: Segment, upstream: str) -> tuple[str, dict[str, Any]]:
        """A segment's fingerprint, and what it is made of (kept in its marker, so that
        `mmcurate plan` can say which part changed)."""
        why = {"engine": self.engine[:16], "upstream": upstream,
               "stages": {f"{i}:{s.name}": s.fingerprint_parts() for i, s in enumerate(seg.stages)},
               "writes_by": self._declarations() if seg.kind == "sink" else None}
        return _hash(__version__, why), why

    def run(self) -> dict[str, Any]:
        t0 = time.time()
        self.job.storage.apply()
        rd = self.run_dir
        fs.makedirs(rd.root)
        # One run per directory, from before the first file is touched to the end.
        with RunLock(rd.root) as self.lock:
            rd.remove_stale([s.name for s in self.segments])
            fs.write_bytes(fs.join(rd.root, "job.yaml"),
                           yaml.safe_dump({**self.job.to_dict(), "output": rd.root, "limit": self.limit},
                                          sort_keys=False).encode())
            fs.write_bytes(fs.join(rd.root, "plan.json"), json.dumps(
                {"segments": [s.name for s in self.segments], "sink": self.segments[-1].kind == "sink",
                 # where this run's media references may point: read by a run that chains from it
                 "media_roots": [rd.media, *self.segments[0].stages[0].media_roots()]}, indent=1).encode())
            results = []
            upstream: dict[str, Any] = {}
            for seg in self.segments[:self.until + 1]:
                if seg.kind == "listing":
                    info = self._run_listing(seg)
                    if self.after_listing is not None:
                        self.after_listing()
                else:
                    fingerprint, why = self.fingerprint(seg, upstream["fingerprint"])
                    marker = rd.marker(seg.name)
                    same = marker and marker.get("fingerprint") == fingerprint and self._intact(seg, marker)
                    if self.start is not None and seg.index < self.start and not same:
                        raise JobError(f"--from {self.segments[self.start].name}: segment {seg.name} before it is "
                                       "not committed with this job's settings; run the job up to there first "
                                       f"(mmcurate run JOB --until {seg.stages[-1].name})")
                    if same and (self.start is None or seg.index < self.start):
                        self.log(f"[mmcurate] {seg.name}: unchanged, skipped (fingerprint {fingerprint})")
                        info = {**marker, "skipped": True}
                    else:
                        if upstream["kept"]:
                            connect_ray(self.ray_address, self.job.ray.num_cpus, self.job.ray.object_store_mb)
                            for later in self.segments[seg.index:self.until + 1]:  # before any of them runs
                                check_resources(later)
                        info = self._run_watched(seg, fingerprint, upstream, why)
                results.append(info)
                upstream = {**info, "dir": rd.segment_dir(seg.name)}
            fs.delete(rd.journal)
            summary = self._summary(results, time.time() - t0)
            summary["warnings"] = self._warnings(summary)
            fs.write_bytes(fs.join(rd.root, "summary.json"), json.dumps(summary, indent=1).encode())
        self.log(format_summary(summary))
        for warning in summary["warnings"]:
            self.log(f"[mmcurate] warning: {warning}")
        return summary

    def _warnings(self, summary: dict[str, Any]) -> list[str]:
        """What a user should hear about a run that worked: nothing kept, or most inputs
        rejected for one reason (with the parameter that governs it)."""
        out = []
        if summary["inputs"] and not summary["kept"] and self.until == len(self.segments) - 1:
            out.append(f"the run kept 0 of {summary['inputs']} samples")
        hints = {s.name: s.reason_hints for s in self.job.stages}
        for seg in summary["segments"]:
            # what ended in this segment, kept or rejected (children included: a repository's files)
            ended = seg["kept"] + sum(n for reasons in seg["rejected"].values() for n in reasons.values())
            what = "inputs" if ended == summary["inputs"] else "samples"
            for stage, reasons in seg["rejected"].items():
                for reason, n in reasons.items():
                    if ended and n > ended / 2:
                        hint = hints.get(stage, {}).get(reason)
                        out.append(f"{n} of {ended} {what} were rejected by {stage} as {reason}"
                                   + (f" ({hint})" if hint else ""))
        return out

    def _declarations(self) -> dict[str, list[str]]:
        """What the sink writes by (member kinds and formats): part of its fingerprint."""
        return {name: [c.kind, c.format] for name, c in sorted(self.columns.items())}

    def _run_watched(self, seg: Segment, fingerprint: str, upstream: dict[str, Any],
                     why: dict[str, Any]) -> dict[str, Any]:
        failed = fs.join(self.run_dir.segment_dir(seg.name), "_FAILED")
        fs.delete(failed)
        try:
            with Watchdog(f"segment {seg.name}", self.job.stall_timeout,
                          "Is a stage stuck, or are the cluster's CPUs/GPUs taken by other work?"):
                return self._run_segment(seg, fingerprint, upstream, why)
        except BaseException as e:
            cause = (stalled(e) or _setup_failed(e, seg.name)) if isinstance(e, Exception) else None
            error = cause or e
            try:  # for `mmcurate status`: which segment failed, and how
                fs.write_bytes(failed, json.dumps({"error": f"{type(error).__name__}: {str(error)[:2000]}"}).encode())
            except Exception:  # noqa: BLE001 - the error itself matters more
                pass
            if cause is not None:
                raise cause from None
            raise

    def _intact(self, seg: Segment, marker: dict[str, Any]) -> bool:
        """Whether a committed segment's files still hold what its marker says."""
        kept, rejected, expanded = self.run_dir.rows_on_disk(seg.name)
        if seg.kind == "sink":
            kept = fs.parquet_rows(self.run_dir.shards)
        said = (marker.get("kept"), marker.get("rejected"), marker.get("expanded", 0))
        if (kept, rejected, expanded) == said:
            return True
        self.log(f"[mmcurate] {seg.name}: its files hold {kept} kept, {rejected} rejected and {expanded} expanded "
                 f"rows, its marker says {said[0]}, {said[1]} and {said[2]}: redoing it")
        return False

    def _commit(self, seg: Segment, tmp: SegmentFiles, info: dict[str, Any]) -> None:
        self.lock.check()
        self.run_dir.commit(seg.name, tmp, info, kept_in_segment=seg.kind != "sink")

    # -- listing: on the driver, before any I/O -----------------------------
    def listed_parts(self, stage: Stage) -> Iterator[pa.Table]:
        """The inputs as the listing commits them, part by part: ids made safe and unique,
        media references checked, rejects stamped."""
        identify = ledger.InputIds()
        roots = [self.run_dir.media, *stage.media_roots()]
        bar = Progress("00-listing", 0)

        def ready(tables: list[pa.Table]) -> pa.Table:
            table = identify(ledger.ensure_reject_column(pa.concat_tables(tables, promote_options="permissive")))
            untrusted = media.check_refs(table, roots)
            if any(untrusted):
                table = ledger.set_column(table, "reject", pa.array(
                    [r if r is not None or why is None else ledger.reject("path_outside_root", why)
                     for r, why in zip(table.column("reject").to_pylist(), untrusted)], type=schemas.REJECT))
            return ledger.stamp_stage(table, stage.name)

        pending: list[pa.Table] = []
        n_pending = listed = 0
        for batch in stage.list_inputs(limit=self.limit):
            if self.inputs_filter is not None:
                batch = self.inputs_filter(batch)
            pending.append(batch)
            n_pending += batch.num_rows
            bar.update(batch.num_rows)
            while n_pending >= part_rows(listed):
                size = part_rows(listed)
                table = pa.concat_tables(pending, promote_options="permissive")
                yield ready([table.slice(0, size)])
                listed += size
                rest = table.slice(size)
                pending, n_pending = [rest], rest.num_rows
        if n_pending:
            yield ready(pending)
        bar.close()

    def _run_listing(self, seg: Segment) -> dict[str, Any]:
        rd, stage = self.run_dir, seg.stages[0]
        tmp = rd.tmp_segment(seg.name)
        digest = hashlib.sha256()
        kept = rejected = written = kept_bytes = 0
        schema: set[str] = set()
        counts: Counter = Counter()
        t0 = time.time()
        for part, table in enumerate(self.listed_parts(stage)):
            schema.update(table.column_names)
            digest.update(_ipc(table))
            live, dead = ledger.split_live(table)
            if live.num_rows:
                written += fs.write_parquet(fs.join(tmp.kept, f"part-{part:06d}.parquet"), live.drop_columns(["reject"]))
                kept_bytes += media.sizes(live)
            if dead.num_rows:
                flat = ledger.flatten_rejects(dead)
                written += fs.write_parquet(fs.join(tmp.rejects, f"part-{part:06d}.parquet"), flat)
                counts.update(ledger.reason_counts(flat))
            kept += live.num_rows
            rejected += dead.num_rows
        if stage.open_columns:  # its columns are the input's: check the job against them now
            self.columns = check_chain(self.job.stages, self.job.source, listed=schema)
        # What was listed decides, not the parameters: a parameter that changes the
        # listing changes its content, and one that does not (quality) must not rerun it.
        fingerprint = _hash(__version__, stage.name, digest.hexdigest())
        marker = rd.marker(seg.name)
        if marker and marker.get("fingerprint") == fingerprint and self._intact(seg, marker):
            for d in tmp:
                fs.delete(d)
            self.log(f"[mmcurate] {seg.name}: inputs unchanged ({kept + rejected}), kept as committed")
            return {**marker, "skipped": True}
        info = {"segment": seg.name, "fingerprint": fingerprint, "inputs": kept + rejected, "kept": kept,
                "kept_bytes": kept_bytes, "rejected": rejected, "rejects": dict(counts), "seconds": time.time() - t0,
                "bytes_written": written}
        self._commit(seg, tmp, info)
        self.log(f"[mmcurate] {seg.name}: {kept + rejected} inputs listed ({rejected} unreadable)")
        return info

    # -- row, global and sink segments on Ray ---------------------------------
    def _run_segment(self, seg: Segment, fingerprint: str, upstream: dict[str, Any],
                     why: dict[str, Any] | None = None) -> dict[str, Any]:
        rd = self.run_dir
        t0 = time.time()
        # The old marker goes first: from here on the segment's files may change (a sink
        # publishes while it runs), and nothing may still vouch for them.
        fs.delete(fs.join(rd.segment_dir(seg.name), "_SUCCESS"))
        tmp = rd.tmp_segment(seg.name)
        self.log(f"[mmcurate] {seg.name}: running on {upstream['kept']} rows")
        writer = SegmentWriter(tmp)
        bar = Progress(seg.name, upstream["kept"])
        ctx = RunContext(rd, seg.name, upstream["kept"], upstream.get("kept_bytes", 0), tmp.kept,
                         _parts(upstream["dir"]), writer, self.columns, bar.phase, self.lock.check)
        kept, kept_bytes, counts, extra = 0, 0, Counter(), {}
        expanded = born = written = 0
        if seg.kind == "sink":
            extra = seg.stages[0].write(self._read(ctx.parts) if upstream["kept"] else None, ctx) or {}
            kept = extra.get("samples", upstream["kept"])
            kept_bytes = upstream.get("kept_bytes", 0)
            on_disk = fs.parquet_rows(rd.shards)
            if kept != upstream["kept"] or on_disk != kept:
                raise RuntimeError(f"{seg.name}: wrote {kept} samples of {upstream['kept']} "
                                   f"({on_disk} in the shard indexes)")
            written = extra.pop("bytes", 0)
        elif upstream["kept"]:
            journal = fs.join(rd.journal, seg.name)
            fs.delete(journal)  # markers of an earlier, interrupted attempt are not crashes of this one
            if seg.kind == "row" and not any(s.stateful for s in seg.stages):
                stats = self._run_as_tasks(seg, ctx, journal, writer)
            else:
                ds = self._read(ctx.parts)
                if seg.kind == "global":
                    ds = seg.stages[0].run_global(ds, ctx)
                    if seg.stages[0].decision is not None:
                        extra["decision"] = seg.stages[0].decision
                else:
                    for stage in seg.stages:
                        ds = self._map_stage(ds, stage, journal)
                # A global stage either returns a dataset to write, or wrote through
                # ctx.writer itself and returns the writer's counts.
                stats = ds if isinstance(ds, list) else \
                    ds.map_batches(writer, batch_size=None, batch_format="pyarrow", num_cpus=IO_CPUS).iter_rows()
            for row in stats:
                found = json.loads(row["rejects"])
                bar.update(row["kept"] + sum(found.values()) + row["expanded"] - row["born"], row["kept"],
                           sum(found.values()))
                kept += row["kept"]
                kept_bytes += row["kept_bytes"]
                counts.update(found)
                expanded += row["expanded"]
                born += row["born"]
                written += row["written"]
        bar.close()
        rejected = sum(counts.values())
        if seg.kind != "sink" and kept + rejected + expanded != upstream["kept"] + born:
            raise RuntimeError(f"{seg.name}: ledger out of balance: {upstream['kept']} rows in and {born} children "
                               f"made, {kept} kept + {rejected} rejected + {expanded} expanded out")
        info = {"segment": seg.name, "fingerprint": fingerprint, "inputs": upstream["kept"], "kept": kept,
                "kept_bytes": kept_bytes, "rejected": rejected, "rejects": dict(counts), "expanded": expanded,
                "derived": born, "bytes_written": written, "seconds": time.time() - t0, "why": why, **extra}
        self._commit(seg, tmp, info)
        self.log(f"[mmcurate] {seg.name}: committed: {kept} kept, {rejected} rejected "
                 f"in {info['seconds']:.1f}s")
        return info

    def _run_as_tasks(self, seg: Segment, ctx: RunContext, journal: str, writer: "SegmentWriter"):
        """Stateless row stages: one Ray task per committed part runs the whole chain.

        Measured on 2 cores (2,000 photographs): 2.3 s, where Ray Data's streaming
        executor took 4.1 s fused and 5-6 s as one operator per stage; Ray Data
        stays for actor pools and shuffles. Retries are Ray's; the crash journal
        makes each retry progress, so the bound only stops a part that cannot
        even be read.
        """
        import ray

        calls = [StageCall(s, journal, s.fingerprint(), self.run_dir.media) for s in seg.stages]
        cpus = max(s.resources.num_cpus for s in seg.stages)
        task = ray.remote(_run_part).options(num_cpus=cpus, max_retries=TASK_MAX_RETRIES, name=seg.name)
        workers = max(1, int(ray.cluster_resources().get("CPU", 1) / max(cpus, 0.01)))
        pending = [task.remote(piece, calls, writer) for piece in slices(ctx.parts, workers)]
        try:
            while pending:
                done, pending = wait(pending)
                for ref in done:
                    yield ray.get(ref)
        finally:
            for ref in pending:  # a stalled or failed segment leaves no task behind
                ray.cancel(ref, force=True)

    @staticmethod
    def _read(parts: list[str]):
        """The parts as a Ray Dataset with one block per slice of a part: read_parquet would
        merge small parts into one block and leave all but one worker idle. The read keeps
        its own small CPU request so that Ray does not fuse it with the next step,
        which would bundle the list of parts itself into batches of batch_size."""
        import ray

        pieces = slices(parts, max(1, int(ray.cluster_resources().get("CPU", 1))))
        items = ray.data.from_items([{"part": p, "start": s, "rows": n} for p, s, n in pieces],
                                    override_num_blocks=max(1, len(pieces)))
        return items.map_batches(_read_parts, batch_size=1, batch_format="pyarrow", num_cpus=IO_CPUS)

    def _map_stage(self, ds, stage: Stage, journal: str):
        res = stage.resources
        opts: dict[str, Any] = {"batch_size": res.batch_size, "batch_format": "pyarrow",
                                "num_cpus": res.num_cpus}
        if res.num_gpus:
            opts["num_gpus"] = res.num_gpus
        key = stage.fingerprint()
        if stage.stateful:
            import ray.data

            if stage.has_prepare:  # CPU tasks feed the pool
                prep = PrepareStep(stage)
                ds = ds.map_batches(_named_call(prep, journal, prep.fingerprint(), self.run_dir.media),
                                    batch_size=res.batch_size, batch_format="pyarrow", num_cpus=res.num_cpus)

            # One block in flight per actor, so that an actor that started first does not
            # queue up the blocks meant for the others (batches within a block are
            # still prefetched while the model runs).
            pool = ray.data.ActorPoolStrategy(size=res.concurrency or 1, max_tasks_in_flight_per_actor=1)
            return ds.map_batches(_actor_class(stage, journal, key, self.run_dir.media), compute=pool, **opts)
        return ds.map_batches(_named_call(stage, journal, key, self.run_dir.media), **opts)

    # -- the summary -----------------------------------------------------------
    def _summary(self, results: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
        inputs = results[0]["inputs"]
        rows = []
        for seg, info in zip(self.segments, results):
            by_reason: dict[str, dict[str, int]] = {}
            for key, n in info.get("rejects", {}).items():
                stage, reason = key.split("\t")
                by_reason.setdefault(stage, {})[reason] = n
            rows.append({"segment": seg.name, "in": info["inputs"], "kept": info["kept"],
                         "rejected": by_reason, "expanded": info.get("expanded", 0), "derived": info.get("derived", 0),
                         "bytes_written": info.get("bytes_written", 0),
                         "seconds": round(info.get("seconds", 0.0), 2), "skipped": bool(info.get("skipped")),
                         **({"decision": info["decision"]} if info.get("decision") else {})})
        final = results[-1]
        return {"job": self.job.name, "output": self.run_dir.root, "inputs": inputs, "kept": final["kept"],
                "rejected": sum(r["rejected"] for r in results), "seconds": round(seconds, 2),
                "samples_per_second": round(inputs / seconds, 1) if seconds else None,
                "segments": rows, **{k: v for k, v in final.items() if k in ("shards", "shard_dir")}}


def format_summary(summary: dict[str, Any]) -> str:
    lines = [f"\n== mmcurate run '{summary['job']}' -> {summary['output']}",
             f"{'segment':<36} {'in':>9} {'kept':>9} {'rejected (stage: reason=count)'}"]
    for row in summary["segments"]:
        rej = "; ".join(f"{stage}: " + ", ".join(f"{r}={n}" for r, n in sorted(reasons.items()))
                        for stage, reasons in sorted(row["rejected"].items())) or "-"
        flag = " (skipped, unchanged)" if row["skipped"] else f" ({row['seconds']}s)"
        lines.append(f"{row['segment'] + flag:<36} {row['in']:>9} {row['kept']:>9} {rej}")
    lines.append(f"inputs {summary['inputs']}, kept {summary['kept']}, rejected {summary['rejected']}; "
                 f"{summary['seconds']}s, {summary['samples_per_second']} samples/s")
    return "\n".join(lines)
