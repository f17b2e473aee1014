"""The WebDataset contract checker: the team's shared one (../shared/tools/check_shards.py)
when this checkout sits beside it, else the copy in tests/tools (a clean clone in CI)."""
from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(ROOT, "..", "shared", "tools", "check_shards.py")
COPY = os.path.join(ROOT, "tests", "tools", "check_shards.py")
CHECKER = SHARED if os.path.exists(SHARED) else COPY


def check_shards(shard_dir: str) -> str:
    """Runs the checker on a shard directory; asserts no violation and returns its report."""
    res = subprocess.run([sys.executable, CHECKER, shard_dir], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0 and "violations=0" in res.stdout, res.stdout + res.stderr
    return res.stdout


def tar_members(shard_dir: str) -> dict[str, bytes]:
    """Every member of every shard of a directory, read back with tarfile: name -> bytes."""
    import glob
    import tarfile

    members = {}
    for tar in glob.glob(os.path.join(shard_dir, "*.tar")):
        with tarfile.open(tar) as tf:
            for m in tf.getmembers():
                members[m.name] = tf.extractfile(m).read()
    return members
