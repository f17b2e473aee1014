"""The copy of the shared shard checker stays the shared one, and finds what it should."""
from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile

import pytest

from tests.shards import COPY, SHARED


def body(path: str) -> list[str]:
    return [line for line in open(path).read().splitlines() if not line.startswith("#")]


@pytest.mark.skipif(not os.path.exists(SHARED), reason="no ../shared beside this checkout (a clean clone)")
def test_the_copy_is_the_shared_checker():
    assert body(COPY) == body(SHARED)


def test_the_copy_reports_a_violation(tmp_path):
    with tarfile.open(tmp_path / "x-000000.tar", "w") as tar:
        data = b"not json"
        info = tarfile.TarInfo("k1.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    res = subprocess.run([sys.executable, COPY, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and "VIOLATION" in res.stdout
