"""Test-only stages. They are pickled by value so that Ray workers need not import tests/."""
from __future__ import annotations

import os
import sys
import time

import cloudpickle
import pyarrow as pa
from pydantic import Field

from pipeline import ledger
from pipeline.job import Job
from pipeline.stage import Params, Resources, RowParams, Stage

cloudpickle.register_pickle_by_value(sys.modules[__name__])


class RaiseOnParams(Params):
    word: str = Field("poison", description="captions containing this word raise")


class RaiseOn(Stage):
    """Raises ValueError for a whole batch if any caption contains `word`."""

    name = "test_raise_on"
    Params = RaiseOnParams
    resources = Resources(num_cpus=0.5, batch_size=16)

    def process(self, batch: pa.Table) -> pa.Table:
        for c in batch.column("caption").to_pylist():
            if self.params.word in c:
                raise ValueError(f"caption contains {self.params.word!r}")
        return batch.append_column("checked", pa.array([True] * batch.num_rows))


class ExitOnParams(Params):
    word: str = Field("poison", description="a batch with this word kills the worker process")


class ExitOn(Stage):
    """Kills its worker process (os._exit) when a caption contains `word`."""

    name = "test_exit_on"
    Params = ExitOnParams
    resources = Resources(num_cpus=0.5, batch_size=16)

    def process(self, batch: pa.Table) -> pa.Table:
        if any(self.params.word in c for c in batch.column("caption").to_pylist()):
            os._exit(3)
        return batch


class RejectOddParams(RowParams):
    column: str = Field("n", description="integer column")


class RejectOdd(Stage):
    """Rejects rows whose `column` is odd (a stand-in for a filter)."""

    name = "test_reject_odd"
    Params = RejectOddParams
    resources = Resources(num_cpus=0.5, batch_size=8)

    def process(self, batch: pa.Table) -> pa.Table:
        values = batch.column(self.params.column).to_pylist()
        return ledger.with_rejects(batch, [ledger.reject("odd", f"{v} is odd") if v % 2 else None for v in values])


class SlowPassParams(Params):
    seconds: float = Field(0.0, ge=0, description="sleep this long before passing the data on")


class SlowPass(Stage):
    """A global stage that passes everything on, after a sleep (to be killed mid-segment)."""

    name = "test_slow_pass"
    kind = "global"
    Params = SlowPassParams

    def run_global(self, ds, ctx):
        time.sleep(self.params.seconds)
        return ds


def make_job(*stages: Stage, name: str = "test") -> Job:
    return Job(name=name, stages=list(stages))


class WorkerTagParams(Params):
    pass


class WorkerTag(Stage):
    """A stateful stage (an actor pool of 2): tags each row with its worker and setup count."""

    name = "test_worker_tag"
    Params = WorkerTagParams
    resources = Resources(num_cpus=0.5, concurrency=2, batch_size=16)

    def setup(self) -> None:
        self.setups = getattr(self, "setups", 0) + 1
        self.pid = os.getpid()

    def process(self, batch: pa.Table) -> pa.Table:
        time.sleep(0.2)  # 1.6 s per block: the second actor is up before the first is done
        return (batch.append_column("worker_pid", pa.array([self.pid] * batch.num_rows, pa.int64()))
                .append_column("setups", pa.array([self.setups] * batch.num_rows, pa.int64())))


class NoModel(WorkerTag):
    """A stateful stage whose setup fails, as a model that cannot load does."""

    name = "test_no_model"

    def setup(self) -> None:
        raise OSError("weights file /models/x.safetensors is truncated")


class Duplicate(Stage):
    """Breaks the row-wise contract: returns its first row twice."""

    name = "test_duplicate"

    def process(self, batch: pa.Table) -> pa.Table:
        return pa.concat_tables([batch.slice(0, 1), batch.slice(0, batch.num_rows - 1)])


class ExitOnInActor(ExitOn):
    """ExitOn as a stateful stage: the crash takes down an actor of the pool."""

    name = "test_exit_on_in_actor"
    resources = Resources(num_cpus=0.5, concurrency=1, batch_size=16)


class SleepOnParams(RowParams):
    word: str = Field("sleep", description="a batch with this word in a caption sleeps for an hour")


class SleepOn(Stage):
    """Hangs (sleeps an hour) on a batch whose caption contains `word`: a stuck stage."""

    name = "test_sleep_on"
    Params = SleepOnParams
    resources = Resources(num_cpus=0.5, batch_size=16)

    def process(self, batch: pa.Table) -> pa.Table:
        if any(self.params.word in str(c) for c in batch.column("caption").to_pylist()):
            time.sleep(3600)
        return batch


class SleepOnInActor(SleepOn):
    name = "test_sleep_on_in_actor"
    resources = Resources(num_cpus=0.5, concurrency=1, batch_size=16)


class SplitParams(RowParams):
    parts: int = Field(2, ge=1, description="children per row")


class Split(Stage):
    """Fans every row out into `parts` children (a stand-in for video -> clips). A row whose
    text says "raise" raises; one that says "die" kills its worker."""

    name = "test_split"
    Params = SplitParams
    resources = Resources(num_cpus=0.5, batch_size=8)

    def reads(self) -> list[str]:
        return ["text"]

    def process(self, batch: pa.Table) -> pa.Table:
        out = []
        for row in batch.to_pylist():
            if "die" in row["text"]:
                os._exit(3)
            if "raise" in row["text"]:
                raise ValueError("this row cannot be split")
            for k in range(self.params.parts):
                fields = {c: v for c, v in row.items() if c not in ("reject",)}
                out.append(ledger.child(row, f"part={k}of{self.params.parts}", **{**fields, "text": f"{row['text']}/{k}"}))
        return pa.Table.from_pylist(out)


class SplitImage(Stage):
    """Each image row becomes two children that carry the image's bytes (a stand-in for
    video -> clips, where children hold media of their own)."""

    name = "test_split_image"
    Params = RowParams
    resources = Resources(num_cpus=0.5, batch_size=8)

    def reads(self) -> list[str]:
        return ["image"]

    def process(self, batch: pa.Table) -> pa.Table:
        out = []
        for row in batch.to_pylist():
            for k in range(2):
                fields = {c: v for c, v in row.items() if c != "reject"}
                out.append(ledger.child(row, f"copy={k}", **fields))
        return pa.Table.from_pylist(out, schema=batch.schema.append(pa.field("parent_id", pa.string()))
                                    if "parent_id" not in batch.column_names else batch.schema)


class LeakBytes(Stage):
    """Raises with the row's caption bytes in the message, as libraries do."""

    name = "test_leak_bytes"
    resources = Resources(num_cpus=0.5, batch_size=8)

    def process(self, batch: pa.Table) -> pa.Table:
        raise ValueError(f"could not convert {batch.column('caption')[0].as_py().encode()!r} to int")


class ChangeImageQuietly(Stage):
    """Rewrites the image it reads without declaring it: the change must not be lost silently."""

    name = "test_change_image_quietly"
    resources = Resources(num_cpus=0.5, batch_size=8)

    def reads(self) -> list[str]:
        return ["image"]

    def process(self, batch: pa.Table) -> pa.Table:
        return ledger.set_column(batch, "image", pa.array([b"\xff\xd8 other"] * batch.num_rows, pa.large_binary()))


class FailGlobal(Stage):
    """A global stage that fails: its segment is recorded as failed."""

    name = "test_fail_global"
    kind = "global"

    def run_global(self, ds, ctx):
        raise RuntimeError("this stage always fails")


class NodeNoteParams(Params):
    folder: str = Field(..., description="a folder every node can write to")


class NodeNote(Stage):
    """Leaves one empty file per batch, named after the Ray node that ran it; rows pass as they came."""

    name = "test_node_note"
    Params = NodeNoteParams
    resources = Resources(num_cpus=1, batch_size=4)

    def process(self, batch: pa.Table) -> pa.Table:
        import uuid

        import ray

        time.sleep(0.2)  # long enough that both nodes get batches
        node = ray.get_runtime_context().get_node_id()
        open(os.path.join(self.params.folder, f"{node}-{uuid.uuid4().hex}"), "w").close()
        return batch
