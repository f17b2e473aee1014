"""The run directory: where segments, rejects, shards and markers live.

<output>/job.yaml                 the resolved job, as run
<output>/stages/<nn>-<name>/      segment outputs + _SUCCESS (fingerprint, counts)
<output>/rejects/<nn>-<name>/     reject parts of that segment
<output>/expanded/<nn>-<name>/    rows of that segment that became children (lineage)
<output>/media/                   the content-addressed media store (pipeline.media)
<output>/shards/                  the published shards and manifest.json
<output>/_journal/                crash journal of unfinished batches (see runner)
<output>/_LOCK                    the run lock (pipeline.lock): one run per directory
<output>/plan.json                the segments the job runs, in order (the audit checks them)
"""
from __future__ import annotations

import json
from typing import Any, NamedTuple

from . import fs


class SegmentFiles(NamedTuple):
    kept: str
    rejects: str
    expanded: str


class SegmentMismatch(RuntimeError):
    """A segment's files disagree with the counts reported for it."""


class RunDir:
    def __init__(self, root: str):
        self.root = root.rstrip("/") if "://" in root else fs.resolve(root)[1]
        self.stages = fs.join(self.root, "stages")
        self.rejects = fs.join(self.root, "rejects")
        self.expanded = fs.join(self.root, "expanded")
        self.media = fs.join(self.root, "media")
        self.shards = fs.join(self.root, "shards")
        self.journal = fs.join(self.root, "_journal")

    def segment_dir(self, name: str) -> str:
        return fs.join(self.stages, name)

    def rejects_dir(self, name: str) -> str:
        return fs.join(self.rejects, name)

    def expanded_dir(self, name: str) -> str:
        return fs.join(self.expanded, name)

    def segment_dirs(self) -> list[str]:
        return self._subdirs(self.stages)

    def reject_dirs(self) -> list[str]:
        return self._subdirs(self.rejects)

    def _subdirs(self, uri: str) -> list[str]:
        import pyarrow.fs as pafs

        filesystem, path = fs.resolve(uri)
        if not fs.is_dir(uri):
            return []
        infos = filesystem.get_file_info(pafs.FileSelector(path))
        names = sorted(i.base_name for i in infos
                       if i.type == pafs.FileType.Directory and not i.base_name.startswith("."))
        return [fs.join(uri, n) for n in names]

    # -- markers ---------------------------------------------------------
    def marker(self, segment: str) -> dict[str, Any] | None:
        """The _SUCCESS marker of a committed segment, or None."""
        uri = fs.join(self.segment_dir(segment), "_SUCCESS")
        if not fs.exists(uri):
            return None
        try:
            return json.loads(fs.read_bytes(uri))
        except ValueError:
            return None

    def commit(self, segment: str, tmp: "SegmentFiles", info: dict[str, Any], kept_in_segment: bool = True) -> None:
        """Publish a finished segment: the old marker goes first, the new one last.

        The rows on disk are counted first: a segment whose files disagree with the
        counts its workers reported is never marked (kept_in_segment=False for a sink,
        whose kept rows are the shards, checked by the runner)."""
        kept, rejected, expanded = (fs.parquet_rows(d) for d in (tmp.kept, tmp.rejects, tmp.expanded))
        if (kept_in_segment and kept != info["kept"]) or rejected != info["rejected"] or \
                expanded != info.get("expanded", 0):
            raise SegmentMismatch(
                f"{segment}: not committed: its files hold {kept if kept_in_segment else '-'} kept, {rejected} "
                f"rejected and {expanded} expanded rows, its workers reported {info['kept']} kept, "
                f"{info['rejected']} rejected and {info.get('expanded', 0)} expanded")
        fs.delete(fs.join(self.segment_dir(segment), "_SUCCESS"))
        fs.replace_dir(tmp.rejects, self.rejects_dir(segment))
        fs.replace_dir(tmp.expanded, self.expanded_dir(segment))
        tmp_kept = tmp.kept
        fs.replace_dir(tmp_kept, self.segment_dir(segment))
        fs.write_bytes(fs.join(self.segment_dir(segment), "_SUCCESS"),
                       json.dumps(info, indent=1, sort_keys=True).encode())

    def rows_on_disk(self, segment: str) -> tuple[int, int, int]:
        """(kept, rejected, expanded) rows in a committed segment's files."""
        return (fs.parquet_rows(self.segment_dir(segment)), fs.parquet_rows(self.rejects_dir(segment)),
                fs.parquet_rows(self.expanded_dir(segment)))

    def tmp_dir(self, kind: str, segment: str) -> str:
        import uuid

        return fs.join(self.root, f".tmp-{kind}-{segment}-{uuid.uuid4().hex[:8]}")

    def tmp_segment(self, segment: str) -> "SegmentFiles":
        """Temporary folders for a segment's kept, rejected and expanded rows (made empty)."""
        files = SegmentFiles(*(self.tmp_dir(k, segment) for k in ("kept", "rejects", "expanded")))
        for d in files:
            fs.makedirs(d)
        return files

    def remove_stale(self, keep: list[str]) -> None:
        """Drop segments that are not in the current plan, and leftover temporaries."""
        for d in self.segment_dirs() + self.reject_dirs() + self._subdirs(self.expanded):
            if d.rsplit("/", 1)[1] not in keep:
                fs.delete(d)
        import pyarrow.fs as pafs

        filesystem, path = fs.resolve(self.root)
        if fs.is_dir(self.root):
            for info in filesystem.get_file_info(pafs.FileSelector(path)):
                if info.base_name.startswith(".tmp-"):
                    fs.delete(fs.join(self.root, info.base_name))
