"""detect_license: repositories' licence files (real texts, from installed packages), SPDX
headers, README statements, the allow-list and the unknown-licence policy."""
from __future__ import annotations

import importlib.metadata as md
import os

import pyarrow as pa
import pytest

from stages.filters.license import DetectLicense, allowed, normalise, recognise
from tests.stages.ingest.test_code import git


def licence_text(package: str) -> str:
    dist = md.distribution(package)
    (f,) = [f for f in dist.files if ".dist-info/" in str(f) and os.path.basename(str(f)).startswith("LICENSE")]
    return open(f.locate(), encoding="utf-8").read()


@pytest.mark.parametrize("package,key", [("requests", "Apache-2.0"), ("idna", "BSD-3-Clause"), ("six", "MIT"),
                                         ("click", "BSD-3-Clause"), ("certifi", "MPL-2.0")])
def test_real_licence_texts_are_recognised(package, key):
    assert recognise(licence_text(package)) == key


def _repo(tmp_path, name, files):
    repo = tmp_path / name
    repo.mkdir()
    git(repo, "init", "-q")
    for path, text in files.items():
        (repo / path).write_text(text)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "x")
    return str(repo), git(repo, "rev-parse", "HEAD").decode().strip()


def test_repository_header_readme_and_policy(tmp_path):
    mit, c1 = _repo(tmp_path, "mit", {"LICENSE": licence_text("six"), "a.py": "x = 1\n"})
    dual, c2 = _repo(tmp_path, "dual", {"LICENSE-APACHE": licence_text("requests"), "LICENSE-MIT": licence_text("six"),
                                        "a.rs": "fn main() {}\n"})
    readme, c3 = _repo(tmp_path, "readme", {"README.md": "# Tool\n\nLicensed under the MIT License.\n"})
    gpl, c4 = _repo(tmp_path, "gpl", {"COPYING": "GNU GENERAL PUBLIC LICENSE\nVersion 3, 29 June 2007\n"})
    none, c5 = _repo(tmp_path, "none", {"a.py": "x = 1\n"})
    rows = [{"repo": mit, "commit": c1, "content": "x = 1\n"},
            {"repo": dual, "commit": c2, "content": "fn main() {}\n"},
            {"repo": readme, "commit": c3, "content": "print(1)\n"},
            {"repo": gpl, "commit": c4, "content": "int x;\n"},
            {"repo": none, "commit": c5, "content": "x = 1\n"},
            {"repo": none, "commit": c5, "content": "# SPDX-License-Identifier: apache-2.0\nx = 1\n"},
            {"repo": mit, "commit": c1, "content": "// SPDX-License-Identifier: GPL-2.0+\n"}]
    out = DetectLicense({}).process(pa.Table.from_pylist(rows))
    assert out.column("license").to_pylist() == ["MIT", "Apache-2.0 OR MIT", "MIT", "GPL-3.0-only", None,
                                                 "Apache-2.0", "GPL-2.0-or-later"]
    reasons = [r and r["reason"] for r in out.column("reject").to_pylist()]
    assert reasons == [None, None, None, "license_not_allowed", "unknown_license", None, "license_not_allowed"]
    flagged = DetectLicense({"unknown_license": "flag"}).process(pa.Table.from_pylist(rows[4:5]))
    assert "reject" not in flagged.column_names or flagged.column("reject").to_pylist() == [None]


def test_expressions_and_the_allow_list():
    assert normalise("mit or apache-2.0") == "MIT OR Apache-2.0" and normalise("NOT-A-LICENCE-9") is None
    permitted = {"MIT", "Apache-2.0"}
    assert allowed("MIT OR GPL-3.0-only", permitted) and not allowed("MIT AND GPL-3.0-only", permitted)
    assert allowed("Apache-2.0 WITH LLVM-exception", permitted)
