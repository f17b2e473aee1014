"""Stage `detect_license`: each file's licence as an SPDX expression, and a licence policy.

The repository's licence comes from its top-level LICENSE/LICENCE/COPYING files at the
file's commit (read once per repository and commit through git plumbing, as ingest_code
reads; licence files in subfolders belong to vendored components, not to the project).
A text is recognised by the phrases each licence is made of (TEXTS): an anchor phrase,
and phrases that must follow it within a window. A file's licence is the one whose
anchor comes FIRST in it: a project's own licence leads its licence file, and bundled
components' licences appended after it ("This binary distribution also bundles ...")
describe shipped binaries that declared licences mostly leave out (scikit-learn, numpy:
joining every block with AND: 104 of 112 in the bench, taking the first: 108).
A GNU notice ("... as published by the Free Software Foundation; either version 2.1 of
the License, or (at your option) any later version") counts where it comes before a GNU
licence's full text; inside the text it is the how-to-apply appendix, ignored. Full GNU
texts are recognised by their title and date, never by a mere mention of the GPL.
Several licence files are alternatives (`OR`: LICENSE-MIT and LICENSE-APACHE), except
files whose name marks third-party content (LICENSE.thirdparty), whose licences are
`AND` components; a notice's `-or-later` wins over the `-only` of the same licence's
full text in another file (COPYING holds the text the notice refers to), README notices
included. Without a licence file, a README's "licensed under the X License" is taken. A
file's own `SPDX-License-Identifier:` header (first 30 lines) wins over the repository's.
Expressions are normalised with `license-expression` (SPDX keys, `GPL-2.0+` becomes
`GPL-2.0-or-later`). Policy: an expression is allowed when every licence an `AND` needs
(and at least one of each `OR`) is in `licenses_allowed` (default: permissive licences,
as The Stack v1 kept); otherwise `license_not_allowed`. A file whose licence cannot be
told is `unknown_license` (reject) or kept with `license: null` (`unknown_license:
flag`). bench/bench_license.py measures `repository_licence` on the installed packages'
own top-level licence files against their declared licences.
"""
from __future__ import annotations

import functools
import re
from typing import Literal

import pyarrow as pa
from pydantic import Field

from pipeline import ledger
from pipeline.stage import Column, Resources, RowParams, Stage

PERMISSIVE = ["MIT", "MIT-0", "Apache-2.0", "BSD-2-Clause", "BSD-3-Clause", "ISC", "0BSD", "Unlicense", "CC0-1.0",
              "Zlib", "BSL-1.0", "PSF-2.0", "Python-2.0", "X11", "NCSA", "UPL-1.0", "WTFPL", "BlueOak-1.0.0",
              "MIT-CMU", "HPND"]
HPND_GRANT = ("permission to use copy modify and distribute this software and its documentation for any purpose and "
              "without fee is hereby granted")
# (SPDX key, [anchor, phrases that must follow it], window: how far after the anchor's start
# they may be). Matched on text lower-cased, commas dropped, whitespace collapsed. Rows with
# the same anchor are tried in order (BSD-3 before BSD-2, ISC before 0BSD, MIT before MIT-0).
TEXTS = [
    ("PSF-2.0", ["python software foundation license version 2"], 0),  # its history section names the GPL
    # GNU licences by title and date: the texts of others (GCC's exception, the LGPL) mention the GPL
    ("AGPL-3.0-only", ["gnu affero general public license version 3 19 november 2007"], 0),
    ("LGPL-3.0-only", ["gnu lesser general public license version 3 29 june 2007"], 0),
    ("LGPL-2.1-only", ["gnu lesser general public license version 2.1 february 1999"], 0),
    ("LGPL-2.0-only", ["gnu library general public license version 2 june 1991"], 0),
    ("GPL-3.0-only", ["gnu general public license version 3 29 june 2007"], 0),
    ("GPL-2.0-only", ["gnu general public license version 2 june 1991"], 0),
    ("MPL-2.0", ["mozilla public license", "2.0"], 60),
    ("EPL-2.0", ["eclipse public license", "2.0"], 60),
    # LLVM's exception follows the Apache text's ~11,000 characters
    ("Apache-2.0 WITH LLVM-exception", ["apache license", "version 2.0", "llvm exceptions to the apache 2.0 license"],
     13000),
    ("Apache-2.0", ["apache license", "version 2.0"], 60),
    ("BSL-1.0", ["boost software license"], 0),
    # the name alone may be a statement about some files ("x.h: CC0 1.0 Universal"), so its text follows
    ("CC0-1.0", ["cc0 1.0 universal", "creative commons corporation is not a law firm"], 400),
    ("CC0-1.0", ["has waived all copyright and related or neighboring rights"], 0),
    ("Unlicense", ["this is free and unencumbered software released into the public domain"], 0),
    ("MIT", ["permission is hereby granted free of charge to any person obtaining a copy",
             "the above copyright notice and this permission notice shall be included"], 2000),
    ("MIT-0", ["permission is hereby granted free of charge to any person obtaining a copy"], 0),  # no condition
    ("ISC", ["distribute this software for any purpose with or without fee is hereby granted",
             "provided that the above copyright notice"], 2000),
    ("0BSD", ["distribute this software for any purpose with or without fee is hereby granted"], 0),
    ("BSD-3-Clause", ["redistribution and use in source and binary forms", "neither the name"], 2000),
    ("BSD-3-Clause", ["redistribution and use in source and binary forms", "endorse or promote"], 2000),
    ("BSD-2-Clause", ["redistribution and use in source and binary forms"], 0),
    ("Zlib", ["altered source versions must be plainly marked"], 0),
    # MIT-CMU is HPND's grant after a "by obtaining, using ... you agree" preamble, so it comes first
    ("MIT-CMU", ["by obtaining using and/or copying this software and/or its associated documentation", HPND_GRANT],
     2000),
    ("HPND", [HPND_GRANT, "not be used in advertising or publicity"], 2000),
]
# "under the terms of the GNU Lesser General Public License as published by the Free Software
# Foundation; either version 2.1 of the License, or (at your option) any later version"
FSF = " as published by the free software foundation"
GNU_NOTICE = re.compile(rf"gnu (lesser |library |affero )?general public licen[cs]e({FSF})?;? (?:either )?version "
                        rf"(\d(?:\.\d)?)(?: of the licen[cs]e)?({FSF})?(;? or \(at your option\) any later version|"
                        r" or any later version)?")
GNU_FAMILY = {None: "GPL", "lesser ": "LGPL", "library ": "LGPL", "affero ": "AGPL"}
LICENSE_FILE = re.compile(r"^(licen[cs]e|copying|unlicense)([-._][\w.-]+)?$", re.I)
THIRD_PARTY = re.compile(r"(third|3rd)[-_.]?party|bundled|vendor", re.I)  # LICENSE.thirdparty, LICENSE-3RD-PARTY.txt
README_FILE = re.compile(r"^readme(\.\w+)?$", re.I)
README_NAMES = [("Apache-2.0", r"apache(?: license)?,? (?:version |v)?2\.0"), ("MIT", r"\bmit\b"),
                ("BSD-3-Clause", r"bsd[- ]3"), ("BSD-2-Clause", r"bsd[- ]2"), ("GPL-3.0-only", r"gpl[- v]*3"),
                ("GPL-2.0-only", r"gpl[- v]*2"), ("MPL-2.0", r"mozilla public license 2"), ("ISC", r"\bisc\b")]
SPDX_HEADER = re.compile(r"SPDX-License-Identifier:\s*([^\n*]+?)\s*(?:\*/|-->|$)", re.M)


@functools.cache
def _licensing():
    from license_expression import get_spdx_licensing

    return get_spdx_licensing()


def normalise(expression: str) -> str | None:
    """An SPDX expression in its canonical form, or None when it names an unknown licence."""
    licensing = _licensing()
    try:
        parsed = licensing.parse(expression, validate=True, strict=False)
    except Exception:  # noqa: BLE001 - ExpressionError and friends: not a licence we know
        return None
    return parsed.render() if parsed is not None else None


def _flat(text: str) -> str:
    text = text.lower().replace("\u201c", '"').replace("\u201d", '"').replace(",", " ")
    return re.sub(r"\s+", " ", text)


@functools.cache
def _texts() -> list[tuple[str, list[str], int]]:
    return [(key, [_flat(p) for p in phrases], window) for key, phrases, window in TEXTS]


def recognise(text: str) -> str | None:
    """The SPDX key of the licence whose text (or GNU notice) starts first in `text`."""
    flat = _flat(text)
    found = []  # (position, row): the earliest wins, rows sharing an anchor go in table order
    for row, (key, (anchor, *rest), window) in enumerate(_texts()):
        at = flat.find(anchor)
        while at >= 0:
            if all(p in flat[at:at + window] for p in rest):
                found.append((at, row, key))
                break
            at = flat.find(anchor, at + 1)
    m = next((m for m in GNU_NOTICE.finditer(flat) if m.group(2) or m.group(4)), None)  # the FSF names it
    if m:
        version = m.group(3) if "." in m.group(3) else m.group(3) + ".0"
        key = f"{GNU_FAMILY[m.group(1)]}-{version}-{'or-later' if m.group(5) else 'only'}"
        if normalise(key):
            found.append((m.start(), -1, key))
    return min(found)[2] if found else None


def repository_licence(texts: dict[str, str]) -> str | None:
    """A repository's licence from its top-level licence files and READMEs (name -> text)."""
    own, bundled, notices = [], [], set()
    for name in sorted(texts):
        key = recognise(texts[name])
        if key and LICENSE_FILE.match(name):
            (bundled if THIRD_PARTY.search(name) else own).append(key)
        elif key and README_FILE.match(name) and key.endswith("-or-later"):
            notices.add(key)
    notices |= {k for k in own + bundled if k.endswith("-or-later")}

    def later(key: str) -> str:  # a notice's "-or-later" covers the same licence's full text in COPYING
        wider = key.removesuffix("-only") + "-or-later"
        return wider if wider in notices else key
    own, bundled = [later(k) for k in own], [later(k) for k in bundled]
    own = sorted(set(own))
    bundled = [k for k in dict.fromkeys(bundled) if k not in own]
    if own or bundled:
        alternatives = " OR ".join(own)
        if len(own) > 1 and bundled:
            alternatives = f"({alternatives})"
        return normalise(" AND ".join(([alternatives] if own else []) + bundled))
    for name in sorted(texts):
        if README_FILE.match(name):
            key = from_readme(texts[name])
            if key:
                return normalise(key)
    return None


def from_readme(text: str) -> str | None:
    m = re.search(r"licen[cs]ed under (?:the )?([^.\n]{2,60})", text, re.I) or \
        re.search(r"^#+\s*licen[cs]e\s*\n+([^\n]{2,120})", text, re.I | re.M)
    if not m:
        return None
    phrase = m.group(1).lower()
    return next((key for key, pattern in README_NAMES if re.search(pattern, phrase)), None)


def allowed(expression: str, permitted: set[str]) -> bool:
    """Every licence an AND needs, and one of each OR, is permitted."""
    licensing = _licensing()
    parsed = licensing.parse(expression)

    def ok(node) -> bool:
        name = type(node).__name__
        if name == "AND":
            return all(ok(a) for a in node.args)
        if name == "OR":
            return any(ok(a) for a in node.args)
        key = getattr(node, "key", None) or str(node)
        return key.split(" WITH ")[0] in permitted
    return ok(parsed)


class DetectLicenseParams(RowParams):
    licenses_allowed: list[str] = Field(default_factory=lambda: list(PERMISSIVE),
                                        description="SPDX keys a file's licence must be made of")
    unknown_license: Literal["reject", "flag"] = Field("reject", description="a file whose licence cannot be told: "
                                                                             "reject, or keep with license null")
    git_timeout: float = Field(120.0, gt=0, description="seconds each git call may take")


class DetectLicense(Stage):
    """Adds `license` (SPDX) from the repository's licence files and SPDX headers; applies the policy."""

    name = "detect_license"
    Params = DetectLicenseParams
    resources = Resources(num_cpus=1, batch_size=256)
    placement = frozenset({"git_timeout"})
    reason_hints = {"license_not_allowed": "licenses_allowed", "unknown_license": "unknown_license"}

    def reads(self) -> list[str]:
        return ["repo", "commit", "content"]

    def adds(self) -> list[Column]:
        return [Column("license"), Column("license_source")]

    def report_columns(self) -> list[str]:
        return ["license", "license_source", "repo", "kind"]

    def report_sections(self, run_root: str, kept) -> list[dict]:
        """Licences of what was kept: repositories, files and definitions per SPDX expression."""
        import html
        import os
        from collections import Counter

        if kept is None or not kept.num_rows or "license" not in kept.column_names:
            return []
        n = kept.num_rows
        licences = [x or "(unknown, flagged)" for x in kept.column("license").to_pylist()]
        repos = kept.column("repo").to_pylist() if "repo" in kept.column_names else [None] * n
        kinds = kept.column("kind").to_pylist() if "kind" in kept.column_names else [None] * n
        sources = kept.column("license_source").to_pylist() if "license_source" in kept.column_names else [None] * n
        files = Counter(lic for lic, k in zip(licences, kinds) if k in (None, "file"))
        items = Counter(lic for lic, k in zip(licences, kinds) if k not in (None, "file"))
        where: dict[str, set] = {}
        for lic, repo, k in zip(licences, repos, kinds):
            if k in (None, "file") and repo:
                where.setdefault(lic, set()).add(os.path.basename(repo))
        headers = Counter(lic for lic, k, src in zip(licences, kinds, sources) if k in (None, "file") and
                          src == "spdx_header")
        e = html.escape
        rows = "".join(
            f"<tr><td>{e(lic)}</td><td>{e(', '.join(sorted(where.get(lic, ())))[:300])}</td>"
            f"<td class='n'>{files[lic]}</td><td class='n'>{headers[lic] or '-'}</td><td class='n'>{items[lic]}</td></tr>"
            for lic in sorted(set(files) | set(items), key=lambda x: (-files[x] - items[x], x)))
        allowed = ", ".join(self.params.licenses_allowed)
        return [{"title": "Licences (kept)", "data": {"files": dict(files), "definitions": dict(items)},
                 "html": f"<p>Allowed: {e(allowed)}; unknown licences: {e(self.params.unknown_license)}.</p>"
                         "<table id='licences'><tr><th>licence (SPDX)</th><th>repositories</th><th>files</th>"
                         "<th>of them by their own SPDX header</th><th>functions, methods, classes</th></tr>"
                         + rows + "</table>"}]

    def setup(self) -> None:
        self._repos: dict[tuple[str, str | None], str | None] = {}

    def process(self, batch: pa.Table) -> pa.Table:
        if not hasattr(self, "_repos"):
            self.setup()
        p = self.params
        permitted = set(p.licenses_allowed)
        licenses, sources, rejects = [], [], []
        for row in batch.select(["repo", "commit", "content"]).to_pylist():
            header = SPDX_HEADER.search("\n".join((row["content"] or "").splitlines()[:30]))
            found, source = None, None
            if header:
                found, source = normalise(header.group(1)), "spdx_header"
            if found is None:
                found, source = self.repository_license(row["repo"], row["commit"]), "repository"
            why = None
            if found is None:
                source = None
                if p.unknown_license == "reject":
                    why = ledger.reject("unknown_license", "no licence file, README statement or SPDX header "
                                                           "that names a known licence")
            elif not allowed(found, permitted):
                why = ledger.reject("license_not_allowed", f"{found} is not in licenses_allowed")
            licenses.append(found)
            sources.append(source)
            rejects.append(why)
        batch = ledger.set_column(batch, "license", pa.array(licenses, pa.string()))
        batch = ledger.set_column(batch, "license_source", pa.array(sources, pa.string()))
        return ledger.with_rejects(batch, rejects)

    def repository_license(self, repo: str | None, commit: str | None) -> str | None:
        """The repository's licence at a commit (cached per worker)."""
        key = (repo, commit)
        if key not in self._repos:
            self._repos[key] = self._read_repository(repo, commit) if repo else None
        return self._repos[key]

    def _read_repository(self, repo: str, commit: str | None) -> str | None:
        import os

        texts: dict[str, bytes] = {}
        if commit is None:  # a plain folder
            for name in sorted(os.listdir(repo)):
                full = os.path.join(repo, name)
                if (LICENSE_FILE.match(name) or README_FILE.match(name)) and os.path.isfile(full) and \
                        not os.path.islink(full):
                    with open(full, "rb") as f:
                        texts[name] = f.read(1 << 20)
        else:
            from stages.ingest.git import Repository

            try:
                with Repository(repo, self.params.git_timeout) as r:
                    top = [e for e in r.tree(commit) if "/" not in e.path and not e.symlink and not e.submodule and
                           (LICENSE_FILE.match(e.path) or README_FILE.match(e.path)) and (e.size or 0) < (1 << 20)]
                    blobs = dict(r.blobs([e.sha for e in top]))
                    texts = {e.path: blobs[e.sha] for e in top}
            except ledger.Rejected:
                return None
        return repository_licence({name: data.decode("utf-8", "replace") for name, data in texts.items()})
