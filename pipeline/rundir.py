"""The run directory: where segments, rejects, shards and markers live.

<output>/job.yaml                 the resolved job, as run
<output>/stages/<nn>-<name>/      segment outputs + _SUCCESS (fingerprint, counts)
<output>/rejects/<nn>-<name>/     reject parts of that segment
<output>/shards/                  the published shards and manifest.json
<output>/_journal/                crash journal of unfinished batches (see runner)
"""
from __future__ import annotations

import json
from typing import Any

from . import fs


class RunDir:
    def __init__(self, root: str):
        self.root = root.rstrip("/") if "://" in root else fs.resolve(root)[1]
        self.stages = fs.join(self.root, "stages")
        self.rejects = fs.join(self.root, "rejects")
        self.shards = fs.join(self.root, "shards")
        self.journal = fs.join(self.root, "_journal")

    def segment_dir(self, name: str) -> str:
        return fs.join(self.stages, name)

    def rejects_dir(self, name: str) -> str:
        return fs.join(self.rejects, name)

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

    def commit(self, segment: str, tmp_kept: str, tmp_rejects: str, info: dict[str, Any]) -> None:
        """Publish a finished segment: the old marker goes first, the new one last."""
        fs.delete(fs.join(self.segment_dir(segment), "_SUCCESS"))
        fs.replace_dir(tmp_rejects, self.rejects_dir(segment))
        fs.replace_dir(tmp_kept, self.segment_dir(segment))
        fs.write_bytes(fs.join(self.segment_dir(segment), "_SUCCESS"),
                       json.dumps(info, indent=1, sort_keys=True).encode())

    def tmp_dir(self, kind: str, segment: str) -> str:
        import uuid

        return fs.join(self.root, f".tmp-{kind}-{segment}-{uuid.uuid4().hex[:8]}")

    def remove_stale(self, keep: list[str]) -> None:
        """Drop segments that are not in the current plan, and leftover temporaries."""
        for d in self.segment_dirs() + self.reject_dirs():
            if d.rsplit("/", 1)[1] not in keep:
                fs.delete(d)
        import pyarrow.fs as pafs

        filesystem, path = fs.resolve(self.root)
        if fs.is_dir(self.root):
            for info in filesystem.get_file_info(pafs.FileSelector(path)):
                if info.base_name.startswith(".tmp-"):
                    fs.delete(fs.join(self.root, info.base_name))
