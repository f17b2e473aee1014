"""Read a shard directory, or a release of a published dataset, back the way a trainer
would, and print what is in it.

    python -m jobs.read_shards runs/demo/shards
    python -m jobs.read_shards datasets/photos          # its latest release
    python -m jobs.read_shards datasets/photos@v0002    # that release
"""
from __future__ import annotations

import collections
import json
import os
import sys


def main(shard_dir: str) -> int:
    import webdataset as wds

    from pipeline import release

    if release.is_dataset(shard_dir):  # a release lists its shards (numbers may skip replaced ones)
        dataset, name = release.resolve(shard_dir)
        manifest = json.load(open(os.path.join(dataset, "releases", name, "manifest.json")))
        pattern = release.shard_urls(shard_dir)
        names = pattern
    else:
        manifest = json.load(open(os.path.join(shard_dir, "manifest.json")))
        names = [s["name"] for s in manifest["shards"]]
    if not names:
        print(f"{shard_dir}: manifest lists no shards")
        return 1
    if not release.is_dataset(shard_dir):
        prefix = names[0].rsplit("-", 1)[0]
        first, last = names[0].rsplit("-", 1)[1][:-4], names[-1].rsplit("-", 1)[1][:-4]
        pattern = os.path.join(shard_dir, f"{prefix}-{{{first}..{last}}}.tar")
    members: collections.Counter = collections.Counter()
    n = 0
    for sample in wds.WebDataset(pattern, shardshuffle=False, empty_check=False):
        n += 1
        members.update(k for k in sample if not k.startswith("__"))
        if n == 1:
            meta = json.loads(sample["json"])
            if meta.get("video_format"):  # decoded as a trainer would, with PyAV
                import io

                import av

                with av.open(io.BytesIO(sample[meta["video_format"]])) as container:
                    frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
                what = (f"{len(frames)} frames of {frames[0].shape[1]}x{frames[0].shape[0]} "
                        f"({meta['video_format']}, {meta.get('duration')} s), "
                        f"{meta.get('keyframe_count')} keyframes in one strip")
            elif meta.get("audio_format"):  # decoded as a trainer would, with soundfile
                import io

                import soundfile as sf

                audio, rate = sf.read(io.BytesIO(sample[meta["audio_format"]]))
                what = f"{len(audio) / rate:.2f} s at {rate} Hz ({meta['audio_format']})"
            else:
                what = f"{meta.get('width')}x{meta.get('height')} {meta.get('image_format')}"
            print(f"first sample {sample['__key__']}: text {sample.get('txt', b'').decode()!r}, {what}")
    where = pattern if isinstance(pattern, str) else f"{shard_dir} ({len(pattern)} shards)"
    print(f"webdataset read {n} samples from {where} (manifest v{manifest['version']}: "
          f"{sum(s['samples'] for s in manifest['shards'])} in {len(names)} shards); members {dict(members)}")
    return 0 if n == sum(s["samples"] for s in manifest["shards"]) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
