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


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The S3 tests talk to moto's server on 127.0.0.1. The endpoint is fixed before the
# test Ray starts, so that its workers inherit it like the driver.
S3_PORT = _free_port()
os.environ.update({
    "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{S3_PORT}",
    "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1",
})
S3_BUCKET = "mmcurate-test"


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


@pytest.fixture(scope="session")
def s3_bucket():
    """moto's S3 server on 127.0.0.1 with an empty bucket; yields "s3://<bucket>"."""
    import pyarrow.fs as pafs
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=S3_PORT, verbose=False)
    server.start()
    pafs.S3FileSystem(endpoint_override=os.environ["AWS_ENDPOINT_URL_S3"], region="us-east-1",
                      allow_bucket_creation=True).create_dir(S3_BUCKET)
    yield f"s3://{S3_BUCKET}"
    server.stop()
