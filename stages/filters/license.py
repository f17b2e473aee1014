"""Stage `detect_license`: each file's licence as an SPDX expression, and a licence policy.

The repository's licence comes from its LICENSE/LICENCE/COPYING files at the file's
commit (read once per repository and commit through git plumbing, as ingest_code
reads), recognised by the phrases each licence's text is made of (TEXTS; order matters:
AGPL and LGPL before GPL, BSD-3 before BSD-2); several licence files (LICENSE-MIT and
LICENSE-APACHE) are alternatives (`OR`). Without a licence file, a README's "licensed
under the X License" is taken. A file's own `SPDX-License-Identifier:` header (first 30
lines) wins over the repository's. Expressions are normalised with `license-expression`
(SPDX keys, `GPL-2.0+` becomes `GPL-2.0-or-later`). Policy: an expression is allowed when
every licence an `AND` needs (and at least one of each `OR`) is in `licenses_allowed`
(default: permissive licences, as The Stack v1 kept); otherwise `license_not_allowed`.
A file whose licence cannot be told is `unknown_license` (reject) or kept with
`license: null` (`unknown_license: flag`). bench/bench_license.py measures the
recognition on the installed packages' own licence files against their declared licences.
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
              "Zlib", "BSL-1.0", "PSF-2.0", "Python-2.0", "X11", "NCSA", "UPL-1.0", "WTFPL", "BlueOak-1.0.0"]
# (SPDX key, phrases that must all appear in the normalised text)
TEXTS = [
    ("PSF-2.0", ["python software foundation license version 2"]),  # its history section names the GPL
    ("AGPL-3.0-only", ["gnu affero general public license", "version 3"]),
    ("LGPL-3.0-only", ["gnu lesser general public license", "version 3"]),
    ("LGPL-2.1-only", ["gnu lesser general public license", "version 2.1"]),
    ("LGPL-2.0-only", ["gnu library general public license", "version 2"]),
    ("GPL-3.0-only", ["gnu general public license", "version 3"]),
    ("GPL-2.0-only", ["gnu general public license", "version 2"]),
    ("MPL-2.0", ["mozilla public license", "2.0"]),
    ("EPL-2.0", ["eclipse public license", "2.0"]),
    ("Apache-2.0", ["apache license", "version 2.0"]),
    ("BSL-1.0", ["boost software license"]),
    ("CC0-1.0", ["cc0 1.0 universal"]),
    ("Unlicense", ["this is free and unencumbered software released into the public domain"]),
    ("MIT", ["permission is hereby granted, free of charge, to any person obtaining a copy"]),
    ("ISC", ["distribute this software for any purpose with or without fee is hereby granted",
             "provided that the above copyright notice"]),
    ("0BSD", ["distribute this software for any purpose with or without fee is hereby granted"]),
    ("BSD-3-Clause", ["redistribution and use in source and binary forms", "neither the name"]),
    ("BSD-3-Clause", ["redistribution and use in source and binary forms", "endorse or promote"]),
    ("BSD-2-Clause", ["redistribution and use in source and binary forms"]),
    ("Zlib", ["altered source versions must be plainly marked"]),
]
LICENSE_FILE = re.compile(r"^(licen[cs]e|copying|unlicense)([-._][\w.-]+)?$", re.I)
README_FILE = re.compile(r"^readme(\.\w+)?$", re.I)
SPDX_HEADER = re.compile(r"SPDX-License-Identifier:\s*([^\n*]+?)\s*(?:\*/|-->|$)", re.M)
README_NAMES = [("Apache-2.0", r"apache(?: license)?,? (?:version |v)?2\.0"), ("MIT", r"\bmit\b"),
                ("BSD-3-Clause", r"bsd[- ]3"), ("BSD-2-Clause", r"bsd[- ]2"), ("GPL-3.0-only", r"gpl[- v]*3"),
                ("GPL-2.0-only", r"gpl[- v]*2"), ("MPL-2.0", r"mozilla public license 2"), ("ISC", r"\bisc\b")]


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


def recognise(text: str) -> str | None:
    """The SPDX key of a licence text, by the phrases it is made of: in its first 3,000
    characters first (a project's own licence comes first; bundled components' notices
    are often appended after it), else anywhere."""
    return _recognise(text[:3000]) or _recognise(text)


def _recognise(text: str) -> str | None:
    flat = re.sub(r"\s+", " ", text.lower().replace("\u201c", '"').replace("\u201d", '"'))
    for key, phrases in TEXTS:
        if all(p in flat for p in phrases):
            if key == "MIT" and "the above copyright notice and this permission notice shall be included" not in flat:
                return "MIT-0"  # MIT without its one condition
            return key
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
        keys = sorted({k for name, data in texts.items() if LICENSE_FILE.match(name)
                       for k in [recognise(data.decode("utf-8", "replace"))] if k})
        if keys:
            return normalise(" OR ".join(keys))
        for name, data in texts.items():
            if README_FILE.match(name):
                key = from_readme(data.decode("utf-8", "replace"))
                if key:
                    return normalise(key)
        return None
