"""The reference fusion trainer: learns from mmcurate's shards, shows how to read them.

    mmcurate train jobs/train.yaml [--set key=value ...]
    torchrun --nproc_per_node=2 -m jobs.train jobs/train.yaml        # gloo on CPUs, NCCL on GPUs

Reading (the webdataset pitfalls, handled):
- shard URLs are brace patterns, local or s3:// (opened through pyarrow.fs);
- each rank takes shards[rank::world] itself, in the main process: webdataset's
  split_by_node asks torch.distributed, which DataLoader workers do not have, so
  inside workers every rank would read everything;
- workers split a rank's shards (split_by_worker); a seeded shuffle buffer per epoch;
- or `resampled: true` with `steps_per_epoch`, for long multi-node runs;
- every rank runs the same number of steps (taken from the shard indexes), so that
  no rank waits forever in an all-reduce at the end of an epoch;
- a sample lacking a modality gets zeros and a mask, and is never dropped.

Model over precomputed features: a projection tower per modality into a shared space.
- late fusion: symmetric InfoNCE (learnable temperature) between every pair of
  modalities both present; a fused embedding from learned per-modality weights;
- early fusion: a matching head over the concatenated projections of a candidate
  pair, trained with in-batch negatives (softmax over the candidates of each anchor);
- hybrid: the late towers and their pairwise InfoNCE (weight `late_weight`) plus an
  early-fusion matching head over every modality slot (projection and presence flag
  of each; weight `match_weight`), trained on each pair alone and, with three or more
  modalities, on all of a sample's modalities against each one's in-batch negatives;
  a pair is scored by the scaled cosine plus the head's score on that pair;
- an optional classification head (`label_field` in meta); meta.sample_weight
  weights every loss term.
Held-out split by cluster_id (else sample_id), so near-duplicates never straddle it;
retrieval recall@1/5/10 for every pair of modalities that held-out samples carry
together, from the earlier to the later in `modalities` (the first such pair is also
reported at the top level).

Several shard sets train together: `shards` may be a list of patterns (image-text and
audio-text shards, say). With modalities [clip_image_emb, clap_audio_emb,
st_caption_emb], the caption tower learns from images and recordings alike.
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import io
import json
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

MODALITIES = ["clip_image_emb", "clip_text_emb", "st_caption_emb"]


@dataclass
class TrainConfig:
    shards: str | list[str] = "runs/demo/shards/demo-{000000..000005}.tar"  # a brace pattern, or a list of them
    output: str = "runs/train"
    modalities: list[str] = field(default_factory=lambda: list(MODALITIES))
    fusion: str = "late"  # late | early | hybrid
    late_weight: float = 1.0  # hybrid: weight of the pairwise contrastive losses
    match_weight: float = 1.0  # hybrid: weight of the matching head's losses
    label_field: str = ""  # meta key with a class label ('' = no classification head)
    dim: int = 64
    hidden: int = 256
    batch_size: int = 64
    steps: int = 300
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup: int = 20
    clip_grad: float = 1.0
    shuffle_buffer: int = 1000
    resampled: bool = False
    steps_per_epoch: int = 0  # 0 = one pass over the rank's training samples
    eval_percent: float = 20.0
    checkpoint_every: int = 100
    max_steps_this_run: int = 0  # stop after this many steps in this invocation (time-sliced jobs); 0 = no limit
    num_workers: int = 0
    seed: int = 0
    device: str = "auto"


# -- data -----------------------------------------------------------------------------------
def expand(pattern: str | list[str]) -> list[str]:
    """Shard URLs from brace patterns, globs, or a published dataset (`DIR`: its latest
    release; `DIR@v0003`: that one), whose manifest lists its shards."""
    import braceexpand

    from pipeline import release

    if isinstance(pattern, list):
        return [u for p in pattern for u in expand(p)]
    if release.is_dataset(pattern):
        return release.shard_urls(pattern)
    urls = []
    for u in braceexpand.braceexpand(pattern):
        urls += sorted(glob.glob(u)) if "://" not in u and any(c in u for c in "*?[") else [u]
    return urls


def _key_hash(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") % 10000


def in_eval(meta: dict[str, Any], sample_id: str, percent: float) -> bool:
    """Deterministic split by cluster_id where the sample has one: a cluster stays together."""
    return _key_hash(str(meta.get("cluster_id") or sample_id)) < percent * 100


def _index_rows(url: str) -> list[tuple[str, str | None]]:
    """(sample_id, cluster_id) of a shard, from its parquet index beside the tar."""
    from pipeline import fs

    table = fs.read_parquet(url[: -len(".tar")] + ".parquet")
    ids = table.column("__key__").to_pylist()
    clusters = table.column("cluster_id").to_pylist() if "cluster_id" in table.column_names else [None] * len(ids)
    return list(zip(ids, clusters))


def train_count(urls: list[str], percent: float) -> int:
    return sum(1 for u in urls for sid, c in _index_rows(u) if not in_eval({"cluster_id": c}, sid, percent))


def to_features(sample: dict[str, Any], cfg: TrainConfig) -> dict[str, Any]:
    meta = json.loads(sample["json"]) if sample.get("json") else {}
    out: dict[str, Any] = {"sample_id": sample["__key__"], "weight": float((meta.get("meta") or {}).get(
        "sample_weight", 1.0)), "eval": in_eval(meta, sample["__key__"], cfg.eval_percent)}
    for m in cfg.modalities:
        raw = sample.get(f"{m}.npy")
        out[m] = None if raw is None else np.load(io.BytesIO(raw)).astype(np.float32)
    if cfg.label_field:
        out["label"] = (meta.get("meta") or {}).get(cfg.label_field, meta.get(cfg.label_field))
    return out


def dataset(urls: list[str], cfg: TrainConfig, epoch: int, split: str):
    import webdataset as wds

    from stages.shard.webdataset import register_gopen

    register_gopen()
    rng = random.Random(cfg.seed * 1000 + epoch)
    source = wds.ResampledShards(urls, seed=cfg.seed + epoch, deterministic=True) if cfg.resampled and \
        split == "train" else wds.SimpleShardList(urls)
    stages = [source, wds.split_by_worker, wds.tarfile_to_samples(handler=wds.warn_and_continue)]
    if split == "train":
        stages.append(wds.shuffle(cfg.shuffle_buffer, initial=min(100, cfg.shuffle_buffer), rng=rng))
    stages += [wds.map(lambda s: to_features(s, cfg)),
               wds.select(lambda s: s["eval"] == (split == "eval"))]
    return wds.DataPipeline(*stages)


def collate(samples: list[dict[str, Any]], cfg: TrainConfig, dims: dict[str, int]):
    import torch

    batch: dict[str, Any] = {"sample_id": [s["sample_id"] for s in samples],
                             "weight": torch.tensor([s["weight"] for s in samples], dtype=torch.float32)}
    for m in cfg.modalities:
        rows = [s[m] if s[m] is not None else np.zeros(dims[m], np.float32) for s in samples]
        batch[m] = torch.from_numpy(np.stack(rows))
        batch[f"{m}_mask"] = torch.tensor([s[m] is not None for s in samples])
    if cfg.label_field:
        batch["label"] = [s["label"] for s in samples]
    return batch


def feature_dims(urls: list[str], cfg: TrainConfig) -> dict[str, int]:
    """Each modality's width, from the first sample that has it."""
    dims: dict[str, int] = {}
    probe = TrainConfig(**{**asdict(cfg), "eval_percent": 0.0})
    for s in dataset(urls, probe, 0, "train"):
        for m in cfg.modalities:
            if m not in dims and s[m] is not None:
                dims[m] = int(s[m].shape[0])
        if len(dims) == len(cfg.modalities):
            break
    missing = [m for m in cfg.modalities if m not in dims]
    if missing:
        raise SystemExit(f"mmcurate train: no sample in {cfg.shards} has {', '.join(missing)}; "
                         "set modalities to the embedding columns the shards carry")
    return dims


# -- model ----------------------------------------------------------------------------------
def build_model(dims: dict[str, int], cfg: TrainConfig, n_classes: int = 0):
    import torch
    from torch import nn

    class Fusion(nn.Module):
        def __init__(self):
            super().__init__()
            self.towers = nn.ModuleDict({m: nn.Sequential(nn.Linear(d, cfg.hidden), nn.GELU(),
                                                          nn.Linear(cfg.hidden, cfg.dim)) for m, d in dims.items()})
            self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
            self.modality_logits = nn.Parameter(torch.zeros(len(dims)))
            self.match = nn.Sequential(nn.Linear(2 * cfg.dim, cfg.hidden), nn.GELU(), nn.Linear(cfg.hidden, 1))
            self.joint = nn.Sequential(nn.Linear(len(dims) * (cfg.dim + 1), cfg.hidden), nn.GELU(),
                                       nn.Linear(cfg.hidden, 1))
            self.classify = nn.Linear(cfg.dim, n_classes) if n_classes else None

        def forward(self, batch) -> dict[str, torch.Tensor]:
            return {m: nn.functional.normalize(tower(batch[m]), dim=-1) for m, tower in self.towers.items()}

        project = forward

        def fused(self, z, batch) -> torch.Tensor:
            """Per-sample weighted mean of the modalities it has (learned weights)."""
            w = torch.softmax(self.modality_logits, 0)
            masks = torch.stack([batch[f"{m}_mask"].float() for m in z], 1) * w
            stacked = torch.stack(list(z.values()), 1)
            return nn.functional.normalize((stacked * masks[..., None]).sum(1) / masks.sum(1, keepdim=True)
                                           .clamp_min(1e-6), dim=-1)

        def joint_scores(self, anchor: dict[str, torch.Tensor], masks: dict[str, torch.Tensor], target: str,
                         candidates: torch.Tensor) -> torch.Tensor:
            """Hybrid head's score of each anchor's modalities (`anchor`, present where `masks`
            says; the rest of the slots empty) with modality `target` taken from each
            candidate: (anchors, candidates)."""
            n, m = len(next(iter(anchor.values()))), len(candidates)
            slots = []
            for name in self.towers:
                if name == target:
                    vec, flag = candidates[None].expand(n, -1, -1), candidates.new_ones(n, m, 1)
                elif name in anchor:
                    flag = masks[name].float()[:, None, None].expand(-1, m, -1)
                    vec = (anchor[name] * masks[name].float()[:, None])[:, None].expand(-1, m, -1)
                else:
                    vec, flag = candidates.new_zeros(n, m, cfg.dim), candidates.new_zeros(n, m, 1)
                slots += [vec, flag]
            return self.joint(torch.cat(slots, -1)).squeeze(-1)

        def pair_scores(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            """Matching-head score of every (a_i, b_j): (len(a), len(b))."""
            pairs = torch.cat([a[:, None, :].expand(-1, len(b), -1), b[None, :, :].expand(len(a), -1, -1)], -1)
            return self.match(pairs).squeeze(-1)

    return Fusion()


def loss_fn(model, batch, cfg: TrainConfig, classes: dict[str, int]):
    import torch
    from torch.nn import functional as F

    core = model.module if hasattr(model, "module") else model
    z = model(batch)  # through the DDP wrapper when distributed, so that gradients are all-reduced
    weight = batch["weight"]
    terms, logs = [], {}
    names = list(z)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            both = batch[f"{a}_mask"] & batch[f"{b}_mask"]
            if both.sum() < 2:
                continue
            za, zb, w = z[a][both], z[b][both], weight[both]
            target = torch.arange(len(za), device=za.device)

            def symmetric(logits):
                per = (F.cross_entropy(logits, target, reduction="none") +
                       F.cross_entropy(logits.T, target, reduction="none")) / 2
                return (per * w).sum() / w.sum()

            if cfg.fusion == "late":
                terms.append(symmetric(core.logit_scale.exp().clamp(max=100) * za @ zb.T))
            elif cfg.fusion == "early":
                terms.append(symmetric(core.pair_scores(za, zb)))
            else:  # hybrid: the pair's contrastive loss, the head on the pair alone, the head on everything
                ones = {a: torch.ones_like(both[both])}
                late = symmetric(core.logit_scale.exp().clamp(max=100) * za @ zb.T)
                match = symmetric(core.joint_scores({a: za}, ones, b, zb))
                if len(names) > 2:  # all the anchor's other modalities against each candidate of b
                    rest = {m: z[m][both] for m in names if m != b}
                    per = F.cross_entropy(core.joint_scores(rest, {m: batch[f"{m}_mask"][both] for m in rest}, b, zb),
                                          target, reduction="none")
                    match = (match + (per * w).sum() / w.sum()) / 2
                terms.append(cfg.late_weight * late + cfg.match_weight * match)
            logs[f"loss_{a}_{b}"] = float(terms[-1].detach())
    if core.classify is not None and "label" in batch:
        known = [i for i, lbl in enumerate(batch["label"]) if str(lbl) in classes]
        if known:
            idx = torch.tensor(known, device=weight.device)
            logits = core.classify(core.fused(z, batch)[idx])
            target = torch.tensor([classes[str(batch["label"][i])] for i in known], device=logits.device)
            per = F.cross_entropy(logits, target, reduction="none")
            terms.append((per * weight[idx]).sum() / weight[idx].sum())
            logs["loss_class"] = float(terms[-1].detach())
    # every parameter takes part in every step (a zero term for heads this mode does not
    # use, or for a batch with no pair to contrast), as DistributedDataParallel expects:
    # a rank that skipped backward would leave the others waiting in the all-reduce
    zero = 0 * sum(p.sum() for p in model.parameters())
    return (torch.stack(terms).sum() if terms else None), zero, logs


# -- evaluation -----------------------------------------------------------------------------
def pair_scores(core, cfg: TrainConfig, a: str, b: str, za, zb):
    """How well each a_i goes with each b_j, as the fusion mode scores a pair."""
    import torch

    if cfg.fusion == "late":
        return za @ zb.T
    if cfg.fusion == "early":
        return core.pair_scores(za, zb)
    ones = {a: torch.ones(len(za), dtype=torch.bool, device=za.device)}
    return core.logit_scale.exp().clamp(max=100) * za @ zb.T + core.joint_scores({a: za}, ones, b, zb)


def retrieval(model, urls: list[str], cfg: TrainConfig, dims: dict[str, int]) -> dict[str, Any]:
    """Recall@1/5/10 over the held-out samples, for every pair of modalities they carry
    together (earlier -> later in cfg.modalities); the first pair's also at the top level."""
    import torch

    core = model.module if hasattr(model, "module") else model
    held_out = list(dataset(urls, cfg, 0, "eval"))
    device = next(core.parameters()).device
    pairs: dict[str, dict[str, float]] = {}
    for i, a in enumerate(cfg.modalities):
        for b in cfg.modalities[i + 1:]:
            samples = [s for s in held_out if s[a] is not None and s[b] is not None]
            if len(samples) < 2:
                continue
            batch = {k: v.to(device) if hasattr(v, "to") else v for k, v in collate(samples, cfg, dims).items()}
            with torch.no_grad():
                z = core.project(batch)
                scores = pair_scores(core, cfg, a, b, z[a], z[b])
            ranks = (scores > scores.diag()[:, None]).sum(1)
            pairs[f"{a}->{b}"] = {**{f"r@{k}": float((ranks < k).float().mean()) for k in (1, 5, 10)},
                                  "eval_samples": len(samples), "chance_r@1": 1 / len(samples)}
    if not pairs:
        return {"eval_samples": 0, "retrieval": {}}
    return {**next(iter(pairs.values())), "retrieval": pairs}


# -- the loop -------------------------------------------------------------------------------
def _checkpoints(path: str) -> list[str]:
    """Checkpoints, newest first (temporaries of an interrupted write are not among them)."""
    return sorted(glob.glob(os.path.join(path, "checkpoint-*.pt")), reverse=True)


def load_checkpoint(path: str, device) -> tuple[dict[str, Any], str] | tuple[None, None]:
    """The newest readable checkpoint and its path. Loaded with weights_only=True: a
    checkpoint is data, and unpickling one must never run code. An unreadable one (a
    crash mid-write, tampering) is skipped for the one before it, with a message."""
    import torch

    for ckpt in _checkpoints(path):
        try:
            return torch.load(ckpt, map_location=device, weights_only=True), ckpt
        except Exception as e:  # noqa: BLE001 - truncated zip, unpickling refused, ...
            print(f"[train] skipping checkpoint {ckpt}: unreadable ({type(e).__name__}: {str(e)[:200]})",
                  file=sys.stderr, flush=True)
    return None, None


def save_checkpoint(state: dict[str, Any], path: str) -> None:
    """Written to a temporary name and renamed: a crash leaves the old files whole."""
    import torch

    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp-{os.getpid()}")
    torch.save(state, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def train(cfg: TrainConfig) -> dict[str, Any]:
    import torch
    import torch.distributed as dist

    if cfg.fusion not in ("late", "early", "hybrid"):
        raise SystemExit(f"mmcurate train: fusion must be late, early or hybrid (got {cfg.fusion!r})")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cfg.device in ("auto", "cuda") and \
        torch.cuda.is_available() else torch.device("cpu")
    torch.manual_seed(cfg.seed)
    urls = expand(cfg.shards)
    if len(urls) < world:
        raise SystemExit(f"mmcurate train: {len(urls)} shards for {world} ranks: every rank needs one")
    mine = urls[rank::world]  # disjoint shards per rank, decided here, not in the workers
    dims = feature_dims(urls, cfg)
    classes: dict[str, int] = {}
    if cfg.label_field:
        labels = sorted({str(s["label"]) for s in dataset(urls, cfg, 0, "train") if s.get("label") is not None})
        classes = {c: i for i, c in enumerate(labels)}
    model = build_model(dims, cfg, len(classes)).to(device)
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, cfg.warmup)) * 0.5 * (
        1 + math.cos(math.pi * min(1.0, s / max(1, cfg.steps)))))
    batches = min(train_count(urls[r::world], cfg.eval_percent) for r in range(world)) // cfg.batch_size
    if batches < 1:
        raise SystemExit("mmcurate train: fewer training samples per rank than one batch; lower batch_size")
    if cfg.steps_per_epoch > batches and not cfg.resampled:
        raise SystemExit(f"mmcurate train: steps_per_epoch={cfg.steps_per_epoch}, but a pass over the data gives "
                         f"each rank only {batches} batches of {cfg.batch_size}; lower steps_per_epoch (0 = one "
                         "pass), or set resampled: true to draw samples with replacement")
    steps_per_epoch = cfg.steps_per_epoch or batches
    os.makedirs(cfg.output, exist_ok=True)
    step = 0
    state, latest = load_checkpoint(cfg.output, device)
    if state is not None:  # exact resume: weights, optimiser, schedule, step; the data stream is replayed to the step
        (model.module if world > 1 else model).load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        step = state["step"]
        torch.set_rng_state(state["rng"])
        if rank == 0:
            print(f"[train] resumed from {latest} at step {step}", flush=True)
    metrics = open(os.path.join(cfg.output, f"metrics-rank{rank}.jsonl"), "a")
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu",
                                                                                                   enabled=False)
    t0 = time.time()
    stop_at = min(cfg.steps, step + cfg.max_steps_this_run) if cfg.max_steps_this_run else cfg.steps
    while step < stop_at:
        epoch, skip = divmod(step, steps_per_epoch)
        before = step
        loader = torch.utils.data.DataLoader(dataset(mine, cfg, epoch, "train"), batch_size=cfg.batch_size,
                                             num_workers=cfg.num_workers,
                                             collate_fn=lambda s: collate(s, cfg, dims))
        for i, batch in enumerate(loader):
            if i >= steps_per_epoch or step >= stop_at:
                break
            if i < skip:
                continue  # replaying the epoch's stream up to where the checkpoint was taken
            batch = {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}
            with amp:
                loss, zero, logs = loss_fn(model, batch, cfg, classes)
            opt.zero_grad(set_to_none=True)
            (zero if loss is None else loss + zero).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
            opt.step()
            sched.step()
            step += 1
            record = {"step": step, "epoch": epoch, "loss": None if loss is None else float(loss),
                      "lr": sched.get_last_lr()[0], "rank": rank, **logs}
            metrics.write(json.dumps(record) + "\n")
            metrics.flush()
            if rank == 0 and (step % 25 == 0 or step == cfg.steps):
                shown = "n/a" if record["loss"] is None else f"{record['loss']:.4f}"
                print(f"[train] step {step}/{cfg.steps} loss {shown} lr {record['lr']:.2e}", flush=True)
            if rank == 0 and cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
                core = model.module if world > 1 else model
                save_checkpoint({"model": core.state_dict(), "optimizer": opt.state_dict(),
                                 "scheduler": sched.state_dict(), "step": step, "rng": torch.get_rng_state(),
                                 "config": asdict(cfg)}, os.path.join(cfg.output, f"checkpoint-{step:08d}.pt"))
        if step == before:  # the stream ended before the epoch's first new step: never loop on it
            raise SystemExit(f"mmcurate train: epoch {epoch} gave no batch after {skip} (steps_per_epoch="
                             f"{steps_per_epoch}); the shards hold fewer samples than their indexes say")
    result: dict[str, Any] = {"steps": step, "seconds": round(time.time() - t0, 2), "rank": rank, "world": world,
                              "shards_read": mine}
    with open(os.path.join(cfg.output, f"rank-{rank}.json"), "w") as f:
        json.dump(result, f, indent=1)
    if rank == 0 and step >= cfg.steps:
        result.update(retrieval(model, urls, cfg, dims))
        print(f"[train] {json.dumps(result)}", flush=True)
        with open(os.path.join(cfg.output, "eval.json"), "w") as f:
            json.dump(result, f, indent=1)
    metrics.close()
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return result


def load_config(path: str | None, sets: list[str]) -> TrainConfig:
    import yaml

    data = {}
    if path:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    for item in sets or []:
        key, _, value = item.partition("=")
        data[key] = yaml.safe_load(value)
    known = set(TrainConfig.__dataclass_fields__)
    unknown = set(data) - known
    if unknown:
        raise SystemExit(f"mmcurate train: unknown key(s) {sorted(unknown)}; allowed: {', '.join(sorted(known))}")
    return TrainConfig(**data)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="mmcurate train", description="Train the reference fusion model on shards.")
    ap.add_argument("config", nargs="?", help="trainer YAML (e.g. jobs/train.yaml)")
    ap.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key")
    args = ap.parse_args(argv)
    train(load_config(args.config, args.set))
    return 0


if __name__ == "__main__":
    sys.exit(main())
