"""A refresh in a process of its own (its own embedded Ray), for the kill -9 test.

    python -m tests.pipeline.refresh_job INPUTS DATASET SLOW_SECONDS
"""
from __future__ import annotations

import sys


def job(inputs: str, seconds: float):
    from stages.dedup.exact import DedupExact
    from stages.ingest.image_text import IngestImageText
    from stages.shard.webdataset import ShardWebDataset
    from tests.pipeline.helpers import SlowPass, make_job

    return make_job(IngestImageText(source=inputs, image_size=32), DedupExact(key="content"),
                    SlowPass(seconds=seconds), ShardWebDataset(name="grow", samples_per_shard=4))


def main(inputs: str, dataset: str, seconds: str) -> int:
    from pipeline.release import refresh

    refresh(job(inputs, float(seconds)), dataset, log=lambda *a: None)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
