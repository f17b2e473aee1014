"""Shared fixtures: one embedded Ray per pytest run, generated demo data."""
from __future__ import annotations

import os
import shutil
import sys
import tempfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


@pytest.fixture(scope="session")
def ray_session():
    """One embedded Ray for the whole run. Four logical CPUs on two cores, so that
    a test's actors and tasks never starve each other."""
    import ray

    tmp = tempfile.mkdtemp(prefix="mmc-ray-", dir="/tmp")
    ray.init(num_cpus=4, object_store_memory=512 << 20, _temp_dir=tmp, include_dashboard=False,
             logging_level="WARNING")
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory):
    """The demo set (real photographs, variations, broken files), 3 images per photograph."""
    from jobs.demo_data import make_demo

    out = str(tmp_path_factory.mktemp("demo-data"))
    info = make_demo(out, copies=3)
    info["dir"] = out
    info["manifest"] = os.path.join(out, "manifest.jsonl")
    return info
