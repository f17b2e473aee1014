"""Licence recognition against declared licences: the installed packages' own licence files.

    .venv/bin/python bench/bench_license.py

Every installed distribution that ships licence files and declares its licence
unambiguously (a `License-Expression`, else exactly one `License :: OSI Approved ::`
classifier that maps to one SPDX key) is a case: detect_license's recognition of its
licence files (alternatives joined by OR, as for a repository) against the declared
licence, both normalised. Packages whose files hold several licences one after another
(vendored code's notices appended) count as they come. Goal: accuracy >= 0.95.
"""
from __future__ import annotations

import importlib.metadata as md
import os
import sys

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
    from stages.filters.license import LICENSE_FILE, normalise, recognise

    right = wrong = 0
    misses = []
    for dist in sorted(md.distributions(), key=lambda d: d.metadata["Name"].lower()):
        truth = declared(dist)
        # the package's own licence files: in its .dist-info or .dist-info/licenses, not the
        # vendored projects' notices deeper down (a repository's top-level files, likewise)
        files = [f for f in dist.files or [] if LICENSE_FILE.match(os.path.basename(str(f))) and
                 str(f).replace("\\", "/").split(".dist-info/", 1)[-1].count("/") <= 1 and ".dist-info/" in str(f)]
        if not truth or not files:
            continue
        keys = set()
        for f in files:
            try:
                text = open(f.locate(), encoding="utf-8", errors="replace").read()
            except OSError:
                continue
            key = recognise(text)
            if key:
                keys.add(key)
        got = normalise(" OR ".join(sorted(keys))) if keys else None
        if got == truth:
            right += 1
        else:
            wrong += 1
            misses.append((dist.metadata["Name"], truth, got))
    total = right + wrong
    print(f"{total} installed packages with licence files and a declared licence: {right} recognised as declared, "
          f"accuracy {right / max(1, total):.3f}")
    for m in misses[:25]:
        print("  differs:", m)


if __name__ == "__main__":
    main()
