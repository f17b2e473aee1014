"""detect_license: repositories' licence files (real texts, from installed packages), SPDX
headers, README statements, the allow-list and the unknown-licence policy."""
from __future__ import annotations

import importlib.metadata as md
import os

import pyarrow as pa
import pytest

from stages.filters.license import (
    PERMISSIVE,
    DetectLicense,
    allowed,
    normalise,
    recognise,
    repository_licence,
)
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


# small generated texts, each made of the phrases its licence is recognised by
BSD3 = ("Copyright (c) 2020 A.\n\nRedistribution and use in source and binary forms, with or without\nmodification, "
        "are permitted.\n* Neither the name of the copyright holder nor the names of its contributors may be used\n"
        "to endorse or promote products derived from this software.\n")
MIT = ("Permission is hereby granted, free of charge, to any person obtaining a copy of this software.\n"
       "The above copyright notice and this permission notice shall be included in all copies.\n")
APACHE = "                Apache License\n          Version 2.0, January 2004\n\nTERMS AND CONDITIONS\n" + "x " * 5000
GPL3 = ("GNU GENERAL PUBLIC LICENSE\n   Version 3, 29 June 2007\n\nPreamble\n\nTERMS AND CONDITIONS\n...\n"
        "END OF TERMS AND CONDITIONS\nHow to Apply These Terms to Your New Programs\n")


def gnu_notice(family: str = "GNU Lesser General Public License", version: str = "2.1", later: bool = True) -> str:
    tail = ", or (at your option) any later version" if later else ""
    return (f"This library is free software; you can redistribute it and/or modify it\nunder the terms of the {family} "
            f"as published by\nthe Free Software Foundation; either version {version} of the License{tail}.\n")


def test_the_first_licence_in_a_file_is_its_licence():
    # a bundled component's notice appended after the project's licence, mentioning GPLv3, then the GPL's text
    gcc = ("\n----\nThis binary distribution also bundles:\nGCC RUNTIME LIBRARY EXCEPTION\nThis is an additional "
           "permission under section 7 of the GNU General Public License, version\n3 (\"GPLv3\").\n----\n")
    assert recognise(BSD3 + gcc + GPL3) == "BSD-3-Clause"
    assert recognise(MIT + BSD3) == "MIT" and recognise(BSD3 + MIT) == "BSD-3-Clause"
    # a mere mention of the GPL is no GPL; its title and date are
    assert recognise("Unlike the GNU General Public License version 3, this is not copyleft.\n") is None
    assert recognise(GPL3) == "GPL-3.0-only"
    # the name of a licence in a statement about some files is not its text
    assert recognise("The following files are licensed differently:\n* random.h: CC0 1.0 Universal\n\n" + BSD3) == \
        "BSD-3-Clause"


def test_gnu_notices_and_or_later():
    assert recognise(gnu_notice()) == "LGPL-2.1-or-later"
    assert recognise(gnu_notice("GNU General Public License", "2", later=False)) == "GPL-2.0-only"
    assert recognise(gnu_notice("GNU Affero General Public License", "3")) == "AGPL-3.0-or-later"
    # a notice before the full text makes it -or-later; the text's own how-to-apply appendix does not
    assert recognise(gnu_notice("GNU General Public License", "3") + "\n" + GPL3) == "GPL-3.0-or-later"
    assert recognise(GPL3 + gnu_notice("GNU General Public License", "3")) == "GPL-3.0-only"
    # without the Free Software Foundation it is no notice
    assert recognise("Distributed under the terms of the GNU General Public License version 2.\n") is None


def test_mit_cmu_hpnd_and_llvm_exception():
    grant = ("Permission to use, copy, modify and distribute this software and its documentation for any purpose\n"
             "and without fee is hereby granted, provided that the above copyright notice appears in all copies,\n"
             "and that the name of X not be used in advertising or publicity pertaining to distribution.\n")
    cmu = ("By obtaining, using, and/or copying this software and/or its associated documentation, you agree\n"
           "that you have read, understood, and will comply with the following terms and conditions:\n\n")
    assert recognise(cmu + grant) == "MIT-CMU" and recognise(grant) == "HPND"
    assert allowed("MIT-CMU", set(PERMISSIVE)) and allowed("HPND", set(PERMISSIVE))
    llvm = APACHE + "\nEND OF TERMS AND CONDITIONS\n---- LLVM Exceptions to the Apache 2.0 License ----\n"
    assert recognise(llvm) == "Apache-2.0 WITH LLVM-exception" and recognise(APACHE) == "Apache-2.0"


def test_repository_licence_combines_files():
    assert repository_licence({"LICENSE-MIT": MIT, "LICENSE-APACHE": APACHE}) == "Apache-2.0 OR MIT"
    # a third-party file's licence is a component (AND), not an alternative
    assert repository_licence({"LICENSE": BSD3, "LICENSE.thirdparty": APACHE}) == "BSD-3-Clause AND Apache-2.0"
    assert repository_licence({"LICENSE-MIT": MIT, "LICENSE-APACHE": APACHE, "LICENSE-3RD-PARTY.txt": BSD3}) == \
        "(Apache-2.0 OR MIT) AND BSD-3-Clause"
    # the notice's -or-later covers the full text beside it, in a licence file or a README
    gpl_text = GPL3.replace("GENERAL", "LESSER GENERAL").replace("3, 29 June 2007", "2.1, February 1999")
    assert recognise(gpl_text) == "LGPL-2.1-only"
    assert repository_licence({"COPYING.LGPL": gpl_text, "LICENSE.txt": gnu_notice()}) == "LGPL-2.1-or-later"
    assert repository_licence({"COPYING": gpl_text, "README.md": "# lib\n\n" + gnu_notice()}) == "LGPL-2.1-or-later"
    assert repository_licence({"COPYING": gpl_text, "README.md": "# lib\n"}) == "LGPL-2.1-only"
    assert repository_licence({"COPYING": GPL3, "README": gnu_notice()}) == "GPL-3.0-only"  # another licence's


def test_only_top_level_licence_files_are_the_repository_s(tmp_path):
    repo = tmp_path / "vendored"
    (repo / "vendor" / "lib").mkdir(parents=True)
    git(repo, "init", "-q")
    (repo / "LICENSE").write_text(MIT)
    (repo / "vendor" / "lib" / "LICENSE").write_text(GPL3)
    (repo / "vendor" / "lib" / "COPYING").write_text(GPL3)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "x")
    commit = git(repo, "rev-parse", "HEAD").decode().strip()
    for at in (commit, None):  # a commit, and a plain folder
        out = DetectLicense({}).process(pa.Table.from_pylist([{"repo": str(repo), "commit": at, "content": "x\n"}]))
        assert out.column("license").to_pylist() == ["MIT"]
