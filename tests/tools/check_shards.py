#!/usr/bin/env python3
# A verbatim copy of ../shared/tools/check_shards.py, the team's shared WebDataset contract
# checker, so that a clean clone without ../shared still checks shards; tests/shards.py
# prefers the shared one when it exists and a test keeps this copy's body identical to it.
"""Check a shard directory against the WebDataset contract of DESIGN.md.

usage: check_shards.py SHARD_DIR
Checks, reading each tar once:
- every <name>-NNNNNN.tar opens with tarfile; numbering is contiguous;
- a sample's members are adjacent; keys have no dots and are unique across shards;
- every sample has a .json member that parses as an object, and at least one
  other member; every .npy member loads with numpy;
- webdataset.WebDataset reads the same number of samples through a brace pattern;
- SHARD_DIR/manifest.json is {"version", "shards": [{"name", "samples", "bytes",
  "sha256"}]} and agrees with the tars exactly (no shard missing or extra).
Prints one VIOLATION line per problem (at most 20) and
'samples=N shards=M violations=K' last; exits 1 on any violation.
"""
import glob
import hashlib
import io
import json
import os
import re
import sys
import tarfile

import numpy as np


def main(d):
    errors = []
    tars = sorted(glob.glob(os.path.join(d, "*.tar")))
    if not tars:
        print("VIOLATION no .tar files")
        print("samples=0 shards=0 violations=1")
        return 1
    names = [re.match(r"(.*?)(\d+)\.tar$", os.path.basename(t)) for t in tars]
    if any(m is None for m in names) or len({m.group(1) for m in names}) != 1:
        errors.append("shard names do not share one <prefix><number>.tar pattern")
    else:
        nums = [int(m.group(2)) for m in names]
        if nums != list(range(nums[0], nums[0] + len(nums))):
            errors.append(f"shard numbers are not contiguous: {nums[:10]}...")
    keys_all, facts = set(), {}
    for t in tars:
        h = hashlib.sha256()
        with open(t, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        samples = {}
        order = []
        try:
            with tarfile.open(t) as tf:
                for m in tf:
                    if not m.isfile():
                        continue
                    base = os.path.basename(m.name)
                    key, _, field = base.partition(".")
                    if not order or order[-1] != key:
                        if key in samples:
                            errors.append(f"{os.path.basename(t)}: members of {key} are not adjacent")
                        order.append(key)
                        samples.setdefault(key, {})
                    data = tf.extractfile(m).read()
                    samples[key][field] = data
                    if field == "json":
                        try:
                            if not isinstance(json.loads(data), dict):
                                errors.append(f"{key}.json is not an object")
                        except ValueError as e:
                            errors.append(f"{key}.json does not parse: {e}")
                    elif field.endswith("npy"):
                        try:
                            np.load(io.BytesIO(data), allow_pickle=False)
                        except Exception as e:  # noqa: BLE001 - report any load failure
                            errors.append(f"{key}.{field} does not load: {e}")
        except tarfile.TarError as e:
            errors.append(f"{os.path.basename(t)} is not a readable tar: {e}")
            continue
        for key, fields in samples.items():
            if key in keys_all:
                errors.append(f"key {key} appears in more than one shard")
            keys_all.add(key)
            if "json" not in fields:
                errors.append(f"sample {key} has no .json")
            if len(fields) < 2:
                errors.append(f"sample {key} has nothing but {sorted(fields)}")
        facts[os.path.basename(t)] = {"samples": len(samples), "bytes": os.path.getsize(t), "sha256": h.hexdigest()}

    if not errors and names[0] is not None:
        import webdataset as wds
        prefix, first, last = names[0].group(1), names[0].group(2), names[-1].group(2)
        pattern = os.path.join(d, f"{prefix}{{{first}..{last}}}.tar")
        n = sum(1 for _ in wds.WebDataset(pattern, shardshuffle=False, empty_check=False))
        if n != len(keys_all):
            errors.append(f"webdataset read {n} samples, the tars hold {len(keys_all)}")

    man = os.path.join(d, "manifest.json")
    if not os.path.exists(man):
        errors.append("no manifest.json in the shard directory")
    else:
        try:
            listed = {s["name"]: s for s in json.load(open(man))["shards"]}
        except (ValueError, KeyError, TypeError) as e:
            errors.append(f"manifest.json is not {{'shards': [{{'name', ...}}]}}: {e}")
            listed = {}
        for name, f in facts.items():
            entry = listed.get(name)
            if entry is None:
                errors.append(f"manifest does not list {name}")
                continue
            for k in ("samples", "bytes", "sha256"):
                if entry.get(k) != f[k]:
                    errors.append(f"manifest {name}.{k} = {entry.get(k)!r}, the file has {f[k]!r}")
        for name in set(listed) - set(facts):
            errors.append(f"manifest lists {name}, which is not there")

    for e in errors[:20]:
        print("VIOLATION", e)
    print(f"samples={len(keys_all)} shards={len(tars)} violations={len(errors)}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
