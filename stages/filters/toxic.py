"""Stage `filter_toxic_text`: a word-list filter.

The list is better_profanity's `profanity_wordlist.txt` (916 entries, shipped inside
the package: offline), matched as whole words (and whole multi-word phrases) on the
lower-cased text. A word list is blunt, it misses context and flags reclaimed or
medical uses, so the matched entries go into the reject detail for review, and
`extra_terms` / `allow_terms` adjust the list per job.
"""
from __future__ import annotations

import os
import re

import pyarrow as pa
from pydantic import Field

from pipeline import ledger
from pipeline.stage import Resources, RowParams, Stage


def wordlist() -> list[str]:
    import better_profanity

    path = os.path.join(os.path.dirname(better_profanity.__file__), "profanity_wordlist.txt")
    with open(path, encoding="utf-8") as f:
        return sorted({w.strip().lower() for w in f if w.strip()})


class FilterToxicTextParams(RowParams):
    text_columns: list[str] = Field(["caption"], min_length=1, description="text columns to check")
    extra_terms: list[str] = Field(default_factory=list, description="terms added to the list")
    allow_terms: list[str] = Field(default_factory=list, description="terms removed from the list")


class FilterToxicText(Stage):
    """Rejects texts with terms of a word list (better_profanity's, plus your own)."""

    name = "filter_toxic_text"
    Params = FilterToxicTextParams
    resources = Resources(num_cpus=1, batch_size=1024)

    def reads(self) -> list[str]:
        return list(self.params.text_columns)

    def setup(self) -> None:
        p = self.params
        extra = {t.strip().lower() for t in p.extra_terms} - {""}
        terms = (set(wordlist()) | extra) - {t.strip().lower() for t in p.allow_terms}
        # longest first, so that a phrase wins over a word inside it
        alternation = "|".join(re.escape(t) for t in sorted(terms, key=len, reverse=True))
        self.pattern = re.compile(rf"(?<!\w)(?:{alternation})(?!\w)")

    def process(self, batch: pa.Table) -> pa.Table:
        texts = [[(t or "").lower() for t in batch.column(c).to_pylist()] for c in self.params.text_columns]
        rejects = []
        for row in zip(*texts):
            hits = sorted({m.group(0) for text in row for m in self.pattern.finditer(text)})
            rejects.append(ledger.reject("toxic_text", f"{len(hits)} term(s) of the word list: {', '.join(hits)}")
                           if hits else None)
        return ledger.with_rejects(batch, rejects)
