"""ingest_table: rows of a file, identity assigned where missing (ids made safe and unique: test_sources)."""
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.stage import SourceError
from pipeline.table import IngestTable


def _list(path, **kw):
    return pa.concat_tables(list(IngestTable(source=str(path), **kw).list_inputs()))


def test_identity_added_and_columns_kept(tmp_path):
    (tmp_path / "r.jsonl").write_text("".join(json.dumps({"text": f"t{i}", "x": i}) + "\n" for i in range(5)))
    t = _list(tmp_path / "r.jsonl")
    assert t.column("ordinal").to_pylist() == [0, 1, 2, 3, 4]
    assert len(set(t.column("sample_id").to_pylist())) == 5 and t.column("x").to_pylist() == [0, 1, 2, 3, 4]
    assert _list(tmp_path / "r.jsonl").column("sample_id") == t.column("sample_id")  # stable across runs
    assert next(IngestTable(source=str(tmp_path / "r.jsonl")).list_inputs(limit=2)).num_rows == 2


def test_given_sample_ids_become_strings_and_missing_ones_are_made(tmp_path):
    pq.write_table(pa.table({"sample_id": [1, None, 3]}), tmp_path / "ints.parquet")
    ids = _list(tmp_path / "ints.parquet").column("sample_id").to_pylist()
    assert ids[0] == "1" and ids[2] == "3" and ids[1] and ids[1] not in ("1", "3", "None")
    pq.write_table(pa.table({"sample_id": [[1], [2]]}), tmp_path / "lists.parquet")
    with pytest.raises(SourceError, match="must hold strings or integers"):
        _list(tmp_path / "lists.parquet")
    with pytest.raises(SourceError, match="file not found"):
        _list(tmp_path / "none.parquet")


def test_json_lines_come_in_blocks_of_whole_lines_with_the_first_blocks_types(tmp_path, monkeypatch):
    import pipeline.table

    monkeypatch.setattr(pipeline.table, "STREAM_BLOCK", 64)  # bytes: most lines cross a block boundary
    rows = [{"i": i, "text": "w" * (i % 7) * 10, "score": i / 2} for i in range(40)]
    rows[5]["text"] = "x" * 500  # a line longer than a block
    rows[30]["extra"] = "late column"
    body = "".join(json.dumps(r) + "\n" for r in rows).rstrip("\n")  # no newline at the end
    (tmp_path / "r.jsonl").write_text(body)
    with open(tmp_path / "r.jsonl", "rb") as f:
        tables = list(pipeline.table.json_lines(f))
    assert len(tables) > 5
    t = pa.concat_tables(tables, promote_options="permissive")
    assert t.column("i").to_pylist() == list(range(40)) and t.column("text").to_pylist()[5] == "x" * 500
    assert t.column("extra").to_pylist()[30] == "late column" and t.column("score").type == pa.float64()
    listed = pa.concat_tables(IngestTable(source=str(tmp_path / "r.jsonl")).list_inputs(), promote_options="permissive")
    assert listed.column("ordinal").to_pylist() == list(range(40))
