"""The downloader against a real HTTP server on 127.0.0.1 that misbehaves in every way we know."""
from __future__ import annotations

import time

import pytest
from PIL import Image

from jobs.demo_data import jpeg, photos
from stages.ingest.download import DownloadError, Downloader, Policy, blocked
from tests.servers import HostileServer

FAST = dict(connect_timeout=2, read_timeout=1, total_timeout=3, retries=2, backoff=0.1,
            max_bytes=1 << 20, allow_private_networks=True)


@pytest.fixture(scope="module")
def server():
    good = jpeg(Image.fromarray(photos()["chelsea"]))
    with HostileServer(images={"good.jpg": good}, stall=4) as srv:
        srv.good = good
        yield srv


def _reason(dl: Downloader, url: str) -> str:
    try:
        dl.fetch(url)
        return "ok"
    except DownloadError as e:
        assert e.detail.startswith(url), e.detail  # the detail names the URL it was given
        return e.reason


@pytest.mark.parametrize("path,reason", [
    ("/img/good.jpg", "ok"), ("/redirect", "ok"), ("/flaky", "ok"),
    ("/loop-a", "redirect_loop"), ("/to-ftp", "redirect_scheme"), ("/missing", "http_404"),
    ("/always-500", "http_500"), ("/slow-first-byte", "timeout"), ("/drip", "timeout"),
    ("/huge", "too_large"), ("/huge-cl", "too_large"), ("/html-as-jpeg", "not_an_image"), ("/noai", "opted_out"),
    ("/drip-headers", "timeout"), ("/bad-location", "bad_redirect"), ("/weird-retry", "http_503"),
])
def test_each_hostile_case_gets_its_reason(server, path, reason):
    t0 = time.monotonic()
    assert _reason(Downloader(Policy(**FAST)), server.url(path)) == reason
    # No case may outlive its budget: attempts x total timeout + backoff.
    assert time.monotonic() - t0 < 3 * FAST["total_timeout"] + 2


def test_good_bytes_arrive_intact(server):
    assert Downloader(Policy(**FAST)).fetch(server.url("/img/good.jpg")) == server.good


def test_retry_after_is_honoured(server):
    t0 = time.monotonic()
    assert Downloader(Policy(**FAST)).fetch(server.url("/busy")) == server.good
    assert time.monotonic() - t0 >= 1.0  # the server asked for a second


def test_five_hundreds_are_retried_then_given_up(server):
    before = server.hits.get("/always-500", 0)
    with pytest.raises(DownloadError):
        Downloader(Policy(**FAST)).fetch(server.url("/always-500"))
    assert server.hits["/always-500"] - before == 3  # one try and two retries


def test_private_addresses_are_blocked_by_default(server):
    with pytest.raises(DownloadError) as e:
        Downloader(Policy(**{**FAST, "allow_private_networks": False})).fetch(server.url("/img/good.jpg"))
    assert e.value.reason == "blocked_address"
    for ip in ("127.0.0.1", "10.1.2.3", "192.168.0.1", "172.16.5.4", "169.254.169.254", "::1", "fd00:ec2::254",
               "100.100.100.200", "0.0.0.0", "::ffff:127.0.0.1", "224.0.0.1",
               "64:ff9b::a9fe:a9fe", "2002:7f00:1::", "::7f00:1", "fec0::1"):  # IPv4 hidden in IPv6, site-local
        assert blocked(ip), ip
    for ip in ("8.8.8.8", "1.1.1.1", "2606:4700:4700::1111"):
        assert not blocked(ip), ip


def test_bad_urls(server):
    dl = Downloader(Policy(**FAST))
    for url, reason in (("ftp://127.0.0.1/x.jpg", "unsupported_scheme"), ("file:///etc/passwd", "unsupported_scheme"),
                        ("http://:80/x", "bad_url"), ("http://127.0.0.1:1/x.jpg", "connection_error"),
                        ("http://a..b/x.jpg", "bad_url"), (f"http://{'x' * 64}.com/x.jpg", "bad_url")):
        with pytest.raises(DownloadError) as e:
            dl.fetch(url)
        assert e.value.reason == reason, (url, e.value.detail)


def test_many_at_once_stay_within_the_per_host_limit(server):
    dl = Downloader(Policy(**{**FAST, "per_host_concurrency": 2, "concurrency": 8}))
    server.latency = 0.2
    try:
        t0 = time.monotonic()
        out = dl.fetch_many([server.url("/img/good.jpg")] * 8)
        elapsed = time.monotonic() - t0
    finally:
        server.latency = 0.0
    assert all(o == server.good for o in out)
    assert elapsed >= 4 * 0.2 - 0.05  # 8 requests, 2 at a time, 0.2 s each


def test_per_host_rate_limit(server):
    dl = Downloader(Policy(**{**FAST, "per_host_rate": 10.0}))
    t0 = time.monotonic()
    dl.fetch_many([server.url("/img/good.jpg")] * 6)
    assert time.monotonic() - t0 >= 0.5 - 0.05  # 10/s: six requests need five gaps of 0.1 s


def test_url_manifest_through_the_pipeline(ray_session, server, tmp_path):
    """A URL list ingested on Ray: every hostile URL is a reject with its reason, the good ones are kept."""
    import json

    from pipeline import fs, ledger
    from pipeline.runner import Runner
    from stages.ingest.image_text import IngestImageText
    from tests.pipeline.helpers import make_job

    cases = {"/img/good.jpg": "kept", "/redirect": "kept", "/missing": "http_404", "/loop-a": "redirect_loop",
             "/to-ftp": "redirect_scheme", "/slow-first-byte": "timeout", "/huge": "too_large",
             "/html-as-jpeg": "not_an_image", "/noai": "opted_out"}
    with open(tmp_path / "urls.jsonl", "w") as f:
        for path in cases:
            f.write(json.dumps({"url": server.url(path), "caption": f"case {path}", "case": path}) + "\n")
    stage = IngestImageText(source=str(tmp_path / "urls.jsonl"), **{k: v for k, v in FAST.items() if k != "backoff"},
                            image_size=64)
    out = str(tmp_path / "run")
    Runner(make_job(stage), out, log=lambda *a: None).run()
    assert ledger.audit(out)["ok"]
    got = {r["case"]: r["reject_reason"] for r in
           fs.read_parquet_dir(f"{out}/rejects/01-ingest_image_text").to_pylist()}
    kept = fs.read_parquet_dir(f"{out}/stages/01-ingest_image_text")
    got.update({c: "kept" for c in kept.column("case").to_pylist()})
    assert got == cases
    assert all(u.startswith("http://127.0.0.1") for u in kept.column("source_uri").to_pylist())


def test_user_agent_names_mmcurate_and_its_version(server):
    from pipeline import __version__

    Downloader(Policy(**FAST)).fetch(server.url("/img/good.jpg"))
    assert f"mmcurate/{__version__}" in " ".join(server.user_agents)


def test_waiting_for_a_busy_host_is_not_counted_as_its_timeout(server):
    dl = Downloader(Policy(**{**FAST, "per_host_rate": 5.0, "total_timeout": 1.0}))
    out = dl.fetch_many([server.url("/img/good.jpg")] * 10)  # the last starts ~2 s after the first
    assert all(o == server.good for o in out)


def test_opt_out_is_read_per_agent():
    from stages.ingest.download import opted_out

    assert opted_out(["noai"]) and opted_out(["mmcurate: noimageai"]) and opted_out(["*: noai"])
    assert opted_out(["unavailable_after: 25 Jun 2010 15:00:00 PST, noai"])
    assert not opted_out(["googlebot: noai"]) and not opted_out(["noindex, nofollow"])
