"""Licence recognition against declared licences: the installed packages' own licence files.

    .venv/bin/python bench/bench_license.py

Every installed distribution that ships licence files and declares its licence
unambiguously (a `License-Expression`, else exactly one `License :: OSI Approved ::`
classifier that maps to one SPDX key) is a case: detect_license's `repository_licence`
of its own top-level licence files (as a repository's: alternatives joined by OR,
third-party files' licences by AND) against the declared licence, both normalised.
Packages whose files hold several licences one after another (vendored code's notices
appended) count as they come. Goal: accuracy >= 0.95.
"""
from __future__ import annotations

import importlib.metadata as md
import os
import sys

from goals import record

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

CLASSIFIERS = {"MIT License": "MIT", "Apache Software License": "Apache-2.0", "BSD License": None,
               "ISC License (ISCL)": "ISC", "Mozilla Public License 2.0 (MPL 2.0)": "MPL-2.0",
               "Python Software Foundation License": "PSF-2.0", "The Unlicense (Unlicense)": "Unlicense",
               "GNU General Public License v3 (GPLv3)": "GPL-3.0-only",
               "GNU Lesser General Public License v3 (LGPLv3)": "LGPL-3.0-only",
               "zlib/libpng License": "Zlib", "Boost Software License 1.0 (BSL-1.0)": "BSL-1.0"}


def declared(dist) -> str | None:
    from stages.filters.license import normalise

    meta = dist.metadata
    if meta.get("License-Expression"):
        return normalise(meta["License-Expression"])
    found = [c.split(" :: ")[-1] for c in meta.get_all("Classifier") or [] if c.startswith("License :: OSI Approved")]
    keys = {CLASSIFIERS.get(c) for c in found}
    return keys.pop() if len(keys) == 1 and None not in keys else None


def main() -> None:
    from stages.filters.license import LICENSE_FILE, repository_licence

    right = wrong = 0
    misses = []
    for dist in sorted(md.distributions(), key=lambda d: d.metadata["Name"].lower()):
        truth = declared(dist)
        # the package's own licence files, the repository's top-level ones: in its own .dist-info
        # or .dist-info/licenses (PEP 639 keeps the project's relative paths there), not the
        # vendored projects' notices deeper down nor vendored packages' own .dist-info folders
        files = [f for f in dist.files or [] if LICENSE_FILE.match(f.name) and f.parts[0].endswith(".dist-info") and
                 (len(f.parts) == 2 or (len(f.parts) == 3 and f.parts[1] == "licenses"))]
        if not truth or not files:
            continue
        texts = {}
        for f in files:
            try:
                texts[f.name] = open(f.locate(), encoding="utf-8", errors="replace").read()
            except OSError:
                continue
        got = repository_licence(texts)
        if got == truth:
            right += 1
        else:
            wrong += 1
            misses.append((dist.metadata["Name"], truth, got))
    total = right + wrong
    print(f"{total} installed packages with licence files and a declared licence: {right} recognised as declared, "
          f"accuracy {right / max(1, total):.3f}")
    record("license", f"detect_license on {total} installed packages' licence files", f"accuracy "
           f"{right / max(1, total):.3f}", goal=">= 0.95", met=right / max(1, total) >= 0.95)
    for m in misses[:25]:
        print("  differs:", m)


if __name__ == "__main__":
    main()
