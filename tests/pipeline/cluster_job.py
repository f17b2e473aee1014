"""Run a job on a real 2-node Ray cluster on this machine (Ray's own cluster_utils: two
raylets with their own resources and object stores), as a separate process.

    python -m tests.pipeline.cluster_job SOURCE OUTPUT NOTES_DIR
"""
from __future__ import annotations

import json
import sys


def cluster_job_stages(source: str):
    """Ingest (inputs on S3) and shards: the stages both runs share."""
    from stages.ingest.image_text import IngestImageText
    from stages.shard.webdataset import ShardWebDataset

    return IngestImageText(source=source, image_size=64), ShardWebDataset(name="c", samples_per_shard=16)


def main(source: str, output: str, notes: str) -> int:
    import ray
    from ray.cluster_utils import Cluster

    from pipeline.runner import Runner
    from tests.pipeline.helpers import NodeNote, make_job

    store = 200 << 20
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": store})
    cluster.add_node(num_cpus=1, object_store_memory=store)
    cluster.wait_for_nodes()
    try:
        ingest, shards = cluster_job_stages(source)
        summary = Runner(make_job(ingest, NodeNote(folder=notes), shards), output, ray_address=cluster.address,
                         log=lambda *a: None).run()
        print(json.dumps({"nodes": len([n for n in ray.nodes() if n["Alive"]]), "kept": summary["kept"]}))
    finally:
        ray.shutdown()
        cluster.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
