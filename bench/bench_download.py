"""Download benchmark: many hosts with a realistic latency, against a plain sequential loop.

    .venv/bin/python bench/bench_download.py [--urls 800] [--hosts 4] [--latency 0.05]

Starts one HTTP server per loopback address (127.0.0.2, 127.0.0.3, ...: distinct
hosts to the downloader), each adding --latency seconds to every response, and
serving ~640x480 JPEGs. Measures:
1. downloads/s of the downloader (bounded concurrency, per-host limits) vs a plain
   sequential urllib loop over the same URLs, in the same run;
2. ingest_image_text on the same URLs (download, decode, resize, encode) on one
   worker without Ray: the share of its time spent waiting for the network vs decoding.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.request

from goals import record

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from jobs.demo_data import make_photo_set  # noqa: E402
from stages.ingest.download import Downloader, Policy  # noqa: E402
from stages.ingest.image_text import IngestImageText  # noqa: E402
from tests.servers import HostileServer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--urls", type=int, default=800)
    ap.add_argument("--hosts", type=int, default=4)
    ap.add_argument("--latency", type=float, default=0.05, help="seconds added to every response")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--per-host", type=int, default=8)
    a = ap.parse_args()

    paths = make_photo_set(os.path.join(HERE, "_data", "photos"), min(a.urls, 400))
    images = {os.path.basename(p): open(p, "rb").read() for p in paths}
    names = sorted(images)
    servers = [HostileServer(f"127.0.0.{i + 2}", images=images, latency=a.latency).__enter__() for i in range(a.hosts)]
    try:
        urls = [servers[i % a.hosts].url(f"/img/{names[i % len(names)]}") for i in range(a.urls)]
        mb = sum(len(images[names[i % len(names)]]) for i in range(a.urls)) / 1e6
        print(f"# {a.urls} URLs ({mb:.0f} MB) on {a.hosts} hosts (127.0.0.2-{a.hosts + 1}), "
              f"{a.latency * 1000:.0f} ms added per response; {os.cpu_count()} cores")

        n_seq = min(a.urls, 200)  # the sequential loop is slow by design: time a slice, report the rate
        t0 = time.perf_counter()
        for u in urls[:n_seq]:
            with urllib.request.urlopen(u, timeout=30) as r:
                r.read()
        seq_rate = n_seq / (time.perf_counter() - t0)

        policy = Policy(allow_private_networks=True, concurrency=a.concurrency, per_host_concurrency=a.per_host)
        dl = Downloader(policy)
        t0 = time.perf_counter()
        out = dl.fetch_many(urls)
        ours = time.perf_counter() - t0
        ok = sum(isinstance(o, bytes) for o in out)
        rate = a.urls / ours
        print(f"1. downloader: {rate:.0f} downloads/s ({ok}/{a.urls} ok, {mb / ours:.0f} MB/s; concurrency "
              f"{a.concurrency}, {a.per_host} per host) vs sequential loop {seq_rate:.0f} downloads/s "
              f"(over the first {n_seq}): ratio {rate / seq_rate:.1f}")
        record("download", f"downloader, {a.hosts} hosts, {a.latency * 1000:.0f} ms latency", f"{rate:.0f} downloads/s",
               baseline=f"sequential urllib loop {seq_rate:.0f}/s", ratio=rate / seq_rate)

        manifest = os.path.join(HERE, "_data", "urls.jsonl")
        with open(manifest, "w") as f:
            for i, u in enumerate(urls):
                f.write(json.dumps({"url": u, "caption": f"image {i}"}) + "\n")
        stage = IngestImageText(source=manifest, allow_private_networks=True, download_concurrency=a.concurrency,
                                per_host_concurrency=a.per_host, image_size=384)
        stage.ensure_setup()
        fetch_s = [0.0]  # time blocked waiting for the next finished download
        fetch_iter = stage.downloader.fetch_iter

        def timed(batch_urls):
            it = fetch_iter(batch_urls)
            while True:
                t = time.perf_counter()
                try:
                    item = next(it)
                except StopIteration:
                    fetch_s[0] += time.perf_counter() - t
                    return
                fetch_s[0] += time.perf_counter() - t
                yield item

        stage.downloader.fetch_iter = timed
        t0 = time.perf_counter()
        kept = 0
        for table in stage.list_inputs():
            size = stage.resources.batch_size
            for i in range(0, table.num_rows, size):
                res = stage.process(table.slice(i, size).drop_columns(["reject"]))
                kept += res.column("reject").null_count
        total = time.perf_counter() - t0
        print(f"2. ingest_image_text, one worker, batches of {stage.resources.batch_size}: {a.urls / total:.0f} img/s "
              f"({kept}/{a.urls} kept); waiting for the network {fetch_s[0] / total:.0%} of the time, "
              f"decoding/resizing/encoding {1 - fetch_s[0] / total:.0%}")
    finally:
        for s in servers:
            s.__exit__(None, None, None)


if __name__ == "__main__":
    main()
