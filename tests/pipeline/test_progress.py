"""Progress a user can see, on a terminal or not, and stderr without noise."""
from __future__ import annotations

import io
import json
import os
import re
import subprocess

from pipeline import fs
from pipeline.progress import Progress
from tests.conftest import ROOT

MMCURATE = os.path.join(ROOT, ".venv", "bin", "mmcurate")


def test_plain_lines_off_a_terminal():
    out = io.StringIO()  # not a terminal: lines, not a bar
    p = Progress("01-ingest_image_text", 200, stream=out)
    p.update(50, kept=45, rejected=5)
    p.phase("components round 2: 3 labels moved")
    p.update(150, kept=140, rejected=10)
    p.close()
    text = out.getvalue()
    assert "[mmcurate] 01-ingest_image_text: components round 2: 3 labels moved" in text
    assert re.search(r"200/200 rows \(100%\), kept 185, rejected 15, [\d.]+ rows/s", text)


def test_a_job_reports_progress_on_a_pipe_and_keeps_stderr_clean(demo_data, tmp_path):
    """The CLI as in CI: stderr is a pipe, lines every MMCURATE_PROGRESS_SECONDS, stage names,
    global phases; none of Ray's notices, no worker progress bars."""
    job = tmp_path / "job.yaml"
    job.write_text(f"name: p\nstages:\n  - ingest_image_text: {{source: {demo_data['manifest']}, image_size: 64}}\n"
                   "  - dedup_phash: {}\n  - embed_clip: {model: tiny-random}\n"
                   "  - shard_webdataset: {samples_per_shard: 20}\n")
    out = str(tmp_path / "run")
    res = subprocess.run([MMCURATE, "run", str(job), "--output", out], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "MMCURATE_PROGRESS_SECONDS": "0.2"})
    assert res.returncode == 0, res.stderr[-3000:]
    err = res.stderr
    assert re.search(r"\[mmcurate\] 01-ingest_image_text: \d+/69 rows \(\d+%\), kept \d+, rejected \d+", err)
    assert re.search(r"\[mmcurate\] 02-dedup_phash: components round 1: \d+ labels moved", err)
    # Ray's core prints one line for every actor pool (Ray Data passes its transform by reference)
    lines = [line for line in err.splitlines() if line.strip() and "core_worker.cc" not in line]
    assert "[mmcurate] 03-embed_clip: " in err and "StageCall" not in "\n".join(lines)
    noise = [line for line in lines if not line.startswith("[mmcurate]")]
    assert noise == [], noise[:10]
    kept = fs.read_parquet_dir(os.path.join(out, "stages", "01-ingest_image_text"), ["sample_id"])
    parts = [f for f in os.listdir(os.path.join(out, "stages", "01-ingest_image_text")) if f.endswith(".parquet")]
    assert kept.num_rows > 50 and len(parts) >= 2  # 69 rows in one part still kept both CPUs busy
    assert json.load(open(os.path.join(out, "summary.json")))["kept"] > 0
