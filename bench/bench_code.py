"""Code throughput: ingest_code + filter_code against a bare git read loop, and functions/s.

    .venv/bin/python bench/bench_code.py [--packages pip,setuptools,pygments,rich,...]

Repositories are made (once, under bench/_data/code_repos) from installed packages'
own sources, one commit each, as the code demo makes its own. On one core, no Ray:
1. baseline: `git ls-files -z` then one `git cat-file --batch` reading every blob and
   decoding it as UTF-8: the least any reader of git's tree must do;
2. ingest_code (git plumbing with every safety override, sizes from the tree, text
   rules, language from the name and confirmed by the tree-sitter parse) and then
   filter_code (The Stack's rules; the parse is ingest's, not made again):
   files/s and its ratio to the baseline, then the same without the parse's own time
   (the parse is work the baseline does not do at all);
3. extract_functions on the kept files: definitions/s.
Then the same ingest and filters as a job on embedded Ray with --cpus CPUs.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time

from goals import record

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

import pyarrow as pa  # noqa: E402

from jobs.demo_code_data import package_repo  # noqa: E402
from stages.filters.code import FilterCode  # noqa: E402
from stages.ingest.code import IngestCode  # noqa: E402
from stages.ingest.grammars import parser  # noqa: E402
from stages.segment.code import ExtractFunctions  # noqa: E402

PACKAGES = "pip,setuptools,pygments,rich,click,idna,packaging,urllib3,requests,jinja2,yaml"


def repositories(packages: list[str]) -> list[str]:
    out = os.path.join(HERE, "_data", "code_repos")
    repos = []
    for package in packages:
        repo = os.path.join(out, package)
        if not os.path.isdir(os.path.join(repo, ".git")):
            shutil.rmtree(repo, ignore_errors=True)
            os.makedirs(out, exist_ok=True)
            try:
                package_repo(out, package)
            except (AttributeError, TypeError, ModuleNotFoundError):  # not installed here
                continue
        repos.append(repo)
    return repos


def bare_loop(repo: str) -> int:
    """Every file of HEAD read through git and decoded: `ls-files` + one `cat-file --batch`."""
    names = subprocess.run(["git", "-C", repo, "ls-files", "-z", "-s"], check=True, capture_output=True).stdout
    shas = [entry.split(b" ")[1] for entry in names.split(b"\0") if entry and not entry.startswith(b"160000")]
    proc = subprocess.run(["git", "-C", repo, "cat-file", "--batch"], input=b"\n".join(shas) + b"\n",
                          check=True, capture_output=True)
    data, i, n = proc.stdout, 0, 0
    while i < len(data):
        header_end = data.index(b"\n", i)
        size = int(data[i:header_end].split(b" ")[2])
        data[header_end + 1:header_end + 1 + size].decode("utf-8", "replace")
        i = header_end + 1 + size + 1
        n += 1
    return n


def ingest_and_filter(repo: str) -> tuple[pa.Table, pa.Table]:
    stage = IngestCode({"source": repo})
    listed = next(stage.list_inputs())
    files = stage.process(listed)
    return files, FilterCode({}).process(files)


def best_of(runs: int, work):
    times, result = [], None
    for _ in range(runs):
        t0 = time.perf_counter()
        result = work()
        times.append(time.perf_counter() - t0)
    return min(times), result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--packages", default=PACKAGES)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--cpus", type=int, default=2)
    a = ap.parse_args()
    repos = repositories(a.packages.split(","))
    print(f"# {len(repos)} repositories from installed packages: {', '.join(os.path.basename(r) for r in repos)}")

    base_s, counts = best_of(a.runs, lambda: [bare_loop(r) for r in repos])
    files = sum(counts)
    mb = sum(os.path.getsize(os.path.join(dp, f)) for r in repos for dp, dn, fn in os.walk(r)
             if "/.git" not in dp + "/" for f in fn) / 1e6
    print(f"baseline git ls-files + cat-file --batch + decode: {files} files ({mb:.1f} MB) in {base_s:.2f}s, "
          f"{files / base_s:,.0f} files/s on one core")

    ours_s, results = best_of(a.runs, lambda: [ingest_and_filter(r) for r in repos])
    ingested = sum(f.num_rows for f, _ in results)
    kept = [t.filter(pa.compute.is_null(t.column("reject"))) for _, t in results]
    n_kept = sum(t.num_rows for t in kept)
    print(f"ingest_code + filter_code: {ingested} files ({n_kept} kept) in {ours_s:.2f}s, "
          f"{ingested / ours_s:,.0f} files/s on one core: {base_s / ours_s:.2f}x the bare loop's speed "
          f"(every safety override, the text rules, a tree-sitter parse of each file and The Stack's rules)")
    record("code", "ingest_code + filter_code, one core", f"{ingested / ours_s:,.0f} files/s",
           baseline=f"git ls-files + cat-file + decode {files / base_s:,.0f} files/s", ratio=base_s / ours_s)
    ingest_only, _ = best_of(a.runs, lambda: [IngestCode({"source": r}).process(
        next(IngestCode({"source": r}).list_inputs())) for r in repos])
    print(f"  of which ingest_code alone (incl. the parse that confirms the language): {ingest_only:.2f}s, "
          f"{ingested / ingest_only:,.0f} files/s")
    texts = [(t, lang) for f, _ in results for t, lang in zip(f.column("content").to_pylist(),
                                                              f.column("language").to_pylist()) if t and lang]
    parse_s, _ = best_of(a.runs, lambda: [parser(lang).parse(t.encode("utf-8", "surrogatepass"))
                                          for t, lang in texts if parser(lang)])
    rest = max(ours_s - parse_s, 1e-9)
    print(f"  of which the tree-sitter parse (once per file, shared by ingest and filters): {parse_s:.2f}s; "
          f"everything else: {rest:.2f}s, {ingested / rest:,.0f} files/s, {base_s / rest:.2f}x the bare loop's speed")

    extract = ExtractFunctions({"keep_files": False})
    ext_s, outs = best_of(a.runs, lambda: [extract.process(t.drop_columns(["reject"])) for t in kept if t.num_rows])
    found = sum(o.num_rows for o in outs)
    print(f"extract_functions: {found} definitions from {n_kept} files in {ext_s:.2f}s, "
          f"{found / ext_s:,.0f} definitions/s on one core")
    record("code", "extract_functions, one core", f"{found / ext_s:,.0f} definitions/s")

    import ray

    from pipeline import cli
    from pipeline.runner import connect_ray

    job = os.path.join(HERE, "_data", "code_job.yaml")
    manifest = os.path.join(HERE, "_data", "code_repos", "repos.jsonl")
    with open(manifest, "w") as f:
        f.writelines(f'{{"repo": "{os.path.basename(r)}"}}\n' for r in repos)
    with open(job, "w") as f:
        f.write(f"name: bench-code\nstages:\n  - ingest_code: {{source: {manifest}}}\n  - filter_code: {{}}\n")
    connect_ray(num_cpus=a.cpus, object_store_mb=1024)
    ray.data.DataContext.get_current().enable_progress_bars = False
    out = os.path.join(HERE, "_data", "code_run")
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    cli.main(["run", job, "--output", out])
    job_s = time.perf_counter() - t0
    print(f"the job (listing, ingest_code + filter_code, commit) on embedded Ray with {a.cpus} CPUs: "
          f"{ingested / job_s:,.0f} files/s, {ingested / job_s / a.cpus:,.0f} files/s/core "
          f"({job_s:.1f}s incl. Ray's start-up of workers)")


if __name__ == "__main__":
    main()
