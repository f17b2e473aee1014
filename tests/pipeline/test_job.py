"""Job files are validated against the stages' own parameter models, with clear messages."""
import os

import pytest

from pipeline.job import JobError, load_job, parse_job
from tests.conftest import ROOT


def _job(*stages):
    return {"name": "t", "stages": list(stages)}


def test_demo_job_is_valid():
    job = load_job(os.path.join(ROOT, "jobs", "demo.yaml"))
    names = [s.name for s in job.stages]
    assert names[0] == "ingest_image_text" and names[-1] == "shard_webdataset"
    assert {"dedup_phash", "embed_clip", "embed_text", "filter_clip_score", "cleanlab_issues"} <= set(names)
    assert job.stages[0].params.image_size == 384


def test_unknown_key_names_stage_key_and_allowed_keys():
    with pytest.raises(JobError) as e:
        parse_job(_job({"ingest_image_text": {"source": "m.jsonl", "max_sid": 5}}), "j.yaml")
    msg = str(e.value)
    assert "j.yaml" in msg and "stages[1]" in msg and "'ingest_image_text'" in msg
    assert "unknown key 'max_sid'" in msg and "image_size" in msg and "quality" in msg


def test_out_of_bounds_and_wrong_choice():
    with pytest.raises(JobError, match=r"'quality': Input should be less than or equal to 100 \(got 150\)"):
        parse_job(_job({"ingest_image_text": {"source": "m", "quality": 150}}))
    with pytest.raises(JobError, match=r"'resize': Input should be 'fit', 'center_crop', 'pad' or 'none'"):
        parse_job(_job({"ingest_image_text": {"source": "m", "resize": "stretch"}}))
    with pytest.raises(JobError, match="missing required key 'source'"):
        parse_job(_job({"ingest_image_text": {}}))


def test_unknown_stage_and_bad_order():
    with pytest.raises(JobError, match="unknown stage 'ingest_imgs'.*known stages: .*ingest_image_text"):
        parse_job(_job({"ingest_imgs": {}}))
    with pytest.raises(JobError, match="must be a source stage"):
        parse_job(_job({"shard_webdataset": {}}))
    with pytest.raises(JobError, match="must be the last stage"):
        parse_job(_job({"ingest_image_text": {"source": "m"}}, "shard_webdataset", "shard_webdataset"))
    with pytest.raises(JobError, match="unknown top-level key"):
        parse_job({"name": "t", "stages": [{"ingest_image_text": {"source": "m"}}], "outptu": "x"})


def test_two_dedup_stages_need_two_indexes():
    """Files then functions: the same stage twice may not overwrite one index folder."""
    code = {"ingest_code": {"source": "repos"}}
    twice = [{"dedup_minhash": {"text_column": "content"}}, {"extract_functions": {}},
             {"dedup_minhash": {"text_column": "code"}}]
    with pytest.raises(JobError, match=r"stages\[1\] and stages\[3\] would both write the index 'dedup_minhash'"):
        parse_job(_job(code, *twice))
    twice[2]["dedup_minhash"]["index_name"] = "dedup_minhash_functions"
    assert len(parse_job(_job(code, *twice)).stages) == 4
    twice[2]["dedup_minhash"]["index_name"] = ".."
    with pytest.raises(JobError, match="index_name"):
        parse_job(_job(code, *twice))


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(JobError, match="job file not found"):
        load_job(str(tmp_path / "nope.yaml"))
    (tmp_path / "bad.yaml").write_text("stages: [\n")
    with pytest.raises(JobError, match="not valid YAML"):
        load_job(str(tmp_path / "bad.yaml"))


BOMB = """name: bomb
a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
stages:
  - ingest_image_text: {source: *h}
"""


def test_a_yaml_bomb_is_refused_fast(tmp_path):
    import time

    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)
    t0 = time.time()
    with pytest.raises(JobError, match="YAML aliases .* expand to more than"):
        load_job(str(path))
    assert time.time() - t0 < 2
    big = tmp_path / "big.yaml"
    big.write_text("name: big\n# " + "x" * (2 << 20) + "\nstages: [ingest_table]\n")
    with pytest.raises(JobError, match="at most 1048576 bytes"):
        load_job(str(big))


def test_messages_about_huge_values_stay_short():
    import time

    nested = [["lol"] * 9] * 9
    for _ in range(5):
        nested = [nested] * 9  # 9**7 strings once expanded, as an alias bomb loaded below the limit would be
    t0 = time.time()
    for bad in ({"ingest_image_text": {"source": nested}}, nested, {"ingest_image_text": nested}):
        with pytest.raises(JobError) as e:
            parse_job({"name": "t", "stages": [bad]})
        assert len(str(e.value)) < 3000
    with pytest.raises(JobError) as e:
        parse_job({"name": "t", "stages": [{"ingest_image_text": {"source": "m"}}], "ray": nested})
    assert len(str(e.value)) < 3000 and time.time() - t0 < 2


def test_a_stage_that_reads_a_column_no_stage_before_it_adds_is_refused(tmp_path):
    job = {"name": "t", "stages": [{"ingest_image_text": {"source": "m.jsonl"}}, {"filter_clip_score": {"threshold": 0.2}},
                                   {"embed_clip": {}}]}
    with pytest.raises(JobError, match=r"stages\[2\]: stage 'filter_clip_score' reads column 'clip_score', which no "
                                       r"stage before it adds; embed_clip adds it: put it before"):
        parse_job(job, "j.yaml")
    job["stages"] = [job["stages"][0], job["stages"][2], job["stages"][1]]
    assert [s.name for s in parse_job(job).stages][-1] == "filter_clip_score"  # in order, it is fine


def test_mmcurate_run_refuses_the_job_naming_the_stage_and_the_column(tmp_path):
    import subprocess

    path = tmp_path / "job.yaml"
    path.write_text("name: t\nstages:\n  - ingest_image_text: {source: m.jsonl}\n  - dedup_minhash: {text_column: body}\n")
    res = subprocess.run([os.path.join(ROOT, ".venv", "bin", "mmcurate"), "run", str(path), "--output",
                          str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "stage 'dedup_minhash' reads column 'body'" in res.stderr
    assert "Traceback" not in res.stderr and not (tmp_path / "o").exists()


def test_a_job_nested_too_deeply_is_a_clear_error(tmp_path):
    path = tmp_path / "deep.yaml"
    path.write_text("name: x\nstages: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(JobError, match="nested too deeply|not valid YAML"):
        load_job(str(path))
