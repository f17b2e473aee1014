"""extract_functions: functions, methods and classes with their documentation in every
grammar, each a child of its file; the file itself kept as one more child."""
from __future__ import annotations

import pyarrow as pa
import pytest

from stages.segment.code import ExtractFunctions, definitions
from tests.stages.segment.code_samples import SAMPLES


@pytest.mark.parametrize("language", sorted(SAMPLES))
def test_documented_definitions_in_every_grammar(language):
    source, expected = SAMPLES[language]
    found = {d["name"]: d for d in definitions(source, language)}
    assert {name: found[name]["docstring"] for name in expected} == expected
    for d in found.values():
        assert d["code"] in source and 1 <= d["start_line"] <= d["end_line"] <= source.count("\n") + 1
        assert d["signature"] and d["kind"] in ("function", "method", "class")


def test_methods_classes_and_signatures():
    source, _ = SAMPLES["Python"]
    found = {d["name"]: d for d in definitions(source, "Python")}
    assert (found["Greeter"]["kind"], found["greet"]["kind"], found["add"]["kind"]) == ("class", "method", "function")
    assert found["add"]["signature"] == "def add(a, b):"
    assert found["greet"]["code"].startswith("@staticmethod")  # decorators belong to the definition
    assert definitions("no grammar", "Markdown") == [] and definitions("", "Python") == []


def test_code_without_docs_cannot_peek_at_the_answer():
    """Retrieval between code and its docstring needs code that does not hold the docstring."""
    src = ('class A:\n    """A class.\n\n    More.\n    """\n    def f(self):\n        """Doc."""\n'
           '        return 1\n\ndef h(): """one"""; return 3\n')
    found = {d["name"]: d for d in definitions(src, "Python")}
    assert found["f"]["code_without_docs"] == "def f(self):\n        return 1"
    assert found["h"]["code_without_docs"] == "def h(): return 3"
    assert "A class" not in found["A"]["code_without_docs"] and "return 1" in found["A"]["code_without_docs"]
    for language, (source, expected) in SAMPLES.items():
        for d in definitions(source, language):
            if d["docstring"] and language == "Python":
                assert d["docstring"].split("\n")[0] not in d["code_without_docs"]
            elif language != "Python":  # documentation sits above the code: the code is the code
                assert d["code_without_docs"] == d["code"]


def test_children_of_the_file_and_require_docstring():
    src = 'def documented():\n    """Yes."""\n\n\ndef bare():\n    return 1\n'
    row = {"sample_id": "f1", "ordinal": 0, "modality": "code", "source_uri": "r@c:a.py", "meta": "{}",
           "content": src, "language": "Python", "path": "a.py"}
    out = ExtractFunctions({}).process(pa.Table.from_pylist([row])).to_pylist()
    assert [r["kind"] for r in out] == ["file", "function", "function"]
    assert {r["parent_id"] for r in out} == {"f1"} and len({r["sample_id"] for r in out}) == 3
    assert out[0]["code"] == src and out[1]["docstring"] == "Yes." and out[2]["docstring"] is None
    strict = ExtractFunctions({"require_docstring": True, "keep_files": False}).process(
        pa.Table.from_pylist([row])).to_pylist()
    assert [r["name"] for r in strict] == ["documented"]
    empty = ExtractFunctions({"keep_files": False}).process(pa.Table.from_pylist([{**row, "content": "x = 1\n"}]))
    assert empty.column("reject").to_pylist()[0]["reason"] == "no_definitions"
