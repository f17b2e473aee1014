"""Stage `filter_caption_quality`: language, repetition and placeholder captions.

- Language: py3langid (langid.py's model, shipped inside the package: offline), with
  normalised probabilities. A caption is rejected when its most likely language is
  not in `languages` and the model is at least `min_language_confidence` sure of it;
  an unsure guess keeps the caption (short English captions such as "a brick wall"
  get 'en' at 0.2). Captions under `min_words_for_language` words are not judged.
- Repetition: the share of word 3-grams that repeat an earlier one (Gopher's
  duplicate n-gram rules, Rae et al. 2021, at caption scale): above
  `max_repeated_ngrams` (default 0.3) the caption is spam-like.
- Boilerplate: a caption that is only a file name, a URL, a camera default name
  (IMG_1234, DSC01234) or a placeholder ("image", "untitled", "no caption", ...).
"""
from __future__ import annotations

import re

import pyarrow as pa
from pydantic import Field

from pipeline import ledger
from pipeline.stage import Column, Resources, RowParams, Stage

PLACEHOLDERS = {"image", "images", "photo", "photos", "picture", "pic", "img", "untitled", "no title", "no caption",
                "caption", "null", "none", "n/a", "na", "placeholder", "stock photo", "stock image", "thumbnail",
                "default", "unknown", "file", "download", "click here", "image not found", "test"}
_FILE = re.compile(r"^[\w\-. ()]+\.(jpe?g|png|gif|webp|bmp|tiff?|heic|svg)$", re.I)
_URL = re.compile(r"^(https?://|www\.)\S+$", re.I)
_CAMERA = re.compile(r"^(img|dsc|dscn|dcim|pxl|mvimg|screenshot|photo|image|vid)[\s_\-]*\d[\w\-]*$", re.I)
_WORDS = re.compile(r"\w+")


def boilerplate(caption: str) -> str | None:
    c = caption.strip()
    low = re.sub(r"\s+", " ", c.lower()).strip(" .!?:;-_\"'")
    if low in PLACEHOLDERS:
        return "placeholder"
    if _URL.match(c):
        return "url"
    if _FILE.match(c):
        return "file name"
    if _CAMERA.match(c):
        return "camera file name"
    return None


def repeated_ngram_share(caption: str, n: int = 3) -> float:
    words = _WORDS.findall(caption.lower())
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    return 0.0 if not grams else (len(grams) - len(set(grams))) / len(grams)


_IDENTIFIER = None


def language(caption: str) -> tuple[str, float]:
    global _IDENTIFIER
    if _IDENTIFIER is None:
        from py3langid.langid import MODEL_FILE, LanguageIdentifier

        _IDENTIFIER = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    lang, prob = _IDENTIFIER.classify(caption)
    return lang, float(prob)


class FilterCaptionQualityParams(RowParams):
    text_column: str = Field("caption", description="caption column")
    languages: list[str] = Field(["en"], description="ISO 639-1 codes to keep; [] = any language")
    min_language_confidence: float = Field(0.5, ge=0, le=1, description="how sure py3langid must be of another "
                                                                                  "language to reject")
    min_words_for_language: int = Field(3, ge=1, description="shorter captions are not judged by language")
    max_repeated_ngrams: float = Field(0.3, ge=0, le=1, description="largest share of repeated word 3-grams")


class FilterCaptionQuality(Stage):
    """Rejects captions in another language, repetitive captions and placeholders (camera names, 'image')."""

    name = "filter_caption_quality"
    Params = FilterCaptionQualityParams
    resources = Resources(num_cpus=1, batch_size=512)

    reason_hints = {"wrong_language": "languages (and min_language_confidence)",
                    "repetitive_caption": "max_repeated_ngrams"}

    def reads(self) -> list[str]:
        return [self.params.text_column]

    def adds(self) -> list[Column]:
        return [Column("caption_language")]

    def process(self, batch: pa.Table) -> pa.Table:
        p = self.params
        langs, rejects = [], []
        for caption in batch.column(p.text_column).to_pylist():
            caption = caption or ""
            kind = boilerplate(caption)
            lang, prob = language(caption) if caption.strip() else ("", 0.0)
            langs.append(lang or None)
            rep = repeated_ngram_share(caption)
            if kind:
                rejects.append(ledger.reject("boilerplate_caption", f"the caption is a {kind}: {caption[:80]!r}"))
            elif rep > p.max_repeated_ngrams:
                rejects.append(ledger.reject("repetitive_caption", f"{rep:.0%} of word 3-grams repeat "
                                             f"(> {p.max_repeated_ngrams:.0%})"))
            elif p.languages and len(_WORDS.findall(caption)) >= p.min_words_for_language and \
                    lang not in p.languages and prob >= p.min_language_confidence:
                rejects.append(ledger.reject("wrong_language", f"{lang} ({prob:.2f}); wanted "
                                             f"{', '.join(p.languages)} >= {p.min_language_confidence}"))
            else:
                rejects.append(None)
        batch = ledger.set_column(batch, "caption_language", pa.array(langs, pa.string()))
        return ledger.with_rejects(batch, rejects)
