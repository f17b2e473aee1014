"""Stage `redact_secrets`: secrets and personal data in code, replaced by placeholders.

Detectors: detect-secrets' plugins, line by line (AWS, GitHub, GitLab, Slack, Stripe,
OpenAI, PyPI, npm and other tokens, JSON web tokens, basic-auth URLs, `password = ...`
keywords, Base64 and hex high-entropy strings), private key blocks (BEGIN ... PRIVATE
KEY through END), e-mail addresses and IP addresses (redact_pii's patterns). Each
match becomes `<KEY>`, `<PASSWORD>` (keyword and basic-auth secrets), `<EMAIL>` or
`<IP>`; the counts go into `meta.redactions` and `secrets_redacted`.

The parse limits the guesswork. A high-entropy string is a secret only where a
secret can be written: inside a string literal or a comment. Outside them (an
identifier, a hex constant in code, a hash in a lock-step table of numbers) it is
left alone when the file's language has a tree-sitter grammar; files without one are
judged on the text alone. Detected keys must also look random (looks_random: enough
distinct characters, no alphabet runs), and a high-entropy string that reads as words
is left alone: detect-secrets' gibberish filter, with the character-bigram model it
ships (rfc.model, trained on RFC text) and its limit 3.7, as BigCode's PII pipeline
used it (hex strings always count, as there). `find` returns what each rule spared;
`bench/bench_code_secrets.py` counts them on real files.
"""
from __future__ import annotations

import functools
import json
import re
import string

import pyarrow as pa
from pydantic import Field

from pipeline import ledger
from pipeline.stage import Column, Resources, RowParams, Stage
from stages.filters.privacy import PATTERNS as PII
from stages.ingest.grammars import parser

PRIVATE_KEY = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)", re.S)
HIGH_ENTROPY = {"Base64 High Entropy String", "Hex High Entropy String"}
PASSWORDS = {"Secret Keyword", "Basic Auth Credentials"}
SKIP = {"Public IP (ipv4)", "Private Key"}  # IPs by our own pattern (all of them); key blocks whole, above
LITERALS = {"string", "string_literal", "raw_string_literal", "interpreted_string_literal", "template_string",
            "string_content", "string_fragment", "char_literal", "heredoc_body", "encapsed_string", "comment",
            "line_comment", "block_comment", "doc_comment", "verbatim_string_literal", "raw_string"}


@functools.cache
def _plugins():
    from detect_secrets.core.plugins.util import get_mapping_from_secret_type_to_class

    return [cls() for kind, cls in sorted(get_mapping_from_secret_type_to_class().items()) if kind not in SKIP]


def literal_spans(text: str, language: str | None) -> list[tuple[int, int]] | None:
    """Character spans of the string literals and comments of a text (None without a grammar)."""
    found = parser(language) if language else None
    if found is None:
        return None
    data = text.encode("utf-8", "surrogatepass")
    spans, stack = [], [found.parse(data).root_node]
    while stack:
        node = stack.pop()
        if node.type in LITERALS:
            spans.append((node.start_byte, node.end_byte))
            continue
        stack.extend(node.children)
    # byte offsets to character offsets
    chars = [len(data[:b].decode("utf-8", "replace")) for span in spans for b in span]
    return sorted(zip(chars[::2], chars[1::2]))


def looks_random(value: str) -> bool:
    """A key or token is drawn at random: many distinct characters, no long ascending run
    (bench_code_secrets.py: the strings real code holds that the detectors flag are
    alphabets, hex digit tables and data with few distinct characters)."""
    distinct = len(set(value))
    if distinct < min(16, 0.45 * len(value)):
        return False
    ascending = sum(1 for a, b in zip(value, value[1:]) if ord(b) - ord(a) == 1)
    return ascending < 0.5 * (len(value) - 1)


GIBBERISH_LIMIT = 3.7  # detect-secrets' own, "obtained through trial and error"


@functools.cache
def _gibberish():
    import os

    from detect_secrets.filters import gibberish
    from gibberish_detector import serializer
    from gibberish_detector.detector import Detector

    with open(os.path.join(gibberish.__path__[0], "rfc.model")) as f:
        return Detector(serializer.deserialize(f.read()), GIBBERISH_LIMIT)


def reads_as_words(value: str) -> bool:
    """detect-secrets' gibberish rule: a string its English model finds likely is not a key
    ('ThisIsNotASecretJustWords'); a hex string cannot be judged and counts as a key."""
    if not set(value) - set(string.hexdigits + "-"):
        return False
    return not _gibberish().is_gibberish(value.lower())


TEMPLATE = re.compile(r"^(\{[^}]*\}|%\(?\w*\)?s|\$\{?\w+\}?|<[^>]*>|\*+|x+|\.\.\.)$", re.I)


def is_placeholder(value: str) -> bool:
    """A password in documentation or a template, not a credential: short (`user:pass`,
    `'bar'`), a template slot (`{password}`, `%s`, `$PASS`, `<secret>`), a mask (`***`)."""
    return len(value) < 6 or bool(TEMPLATE.match(value.strip("'\"")))


def find(text: str, language: str | None) -> tuple[list[tuple[int, int, str]], dict[str, int]]:
    """(start, end, placeholder) of every secret to redact, and how many detector hits each
    rule left alone: `outside_literals` (the parse), `not_random`, `words` (gibberish),
    `placeholder` (a documentation or template password)."""
    from detect_secrets.settings import default_settings

    hits: list[tuple[int, int, str]] = [(m.start(), m.end(), "<KEY>") for m in PRIVATE_KEY.finditer(text)]
    spans = literal_spans(text, language)
    spared = {"outside_literals": 0, "not_random": 0, "words": 0, "placeholder": 0}
    offset = 0
    with default_settings():
        for number, line in enumerate(text.splitlines(keepends=True), 1):
            for plugin in _plugins():
                for secret in plugin.analyze_line(filename="x", line=line, line_number=number):
                    value = secret.secret_value
                    if not value:
                        continue
                    for m in re.finditer(re.escape(value), line):
                        start, end = offset + m.start(), offset + m.end()
                        if secret.type in HIGH_ENTROPY and spans is not None and \
                                not any(a <= start and end <= b for a, b in spans):
                            spared["outside_literals"] += 1
                            continue
                        if secret.type not in PASSWORDS and not looks_random(value):
                            spared["not_random"] += 1
                            continue  # an alphabet, a hex digit table, a padded run: not a key
                        if secret.type in PASSWORDS and is_placeholder(value):
                            spared["placeholder"] += 1
                            continue
                        if secret.type in HIGH_ENTROPY and reads_as_words(value):
                            spared["words"] += 1
                            continue
                        hits.append((start, end, "<PASSWORD>" if secret.type in PASSWORDS else "<KEY>"))
            offset += len(line)
    for label in ("EMAIL", "IP"):
        hits += [(m.start(), m.end(), f"<{label}>") for m in dict(PII)[label].finditer(text)]
    return hits, spared


def redact(text: str, hits: list[tuple[int, int, str]]) -> tuple[str, dict[str, int]]:
    """The text with every hit replaced (overlaps merged: the earliest, longest wins)."""
    out, counts, pos = [], {}, 0
    for start, end, label in sorted(hits, key=lambda h: (h[0], -h[1])):
        if start < pos:
            continue
        out += [text[pos:start], label]
        counts[label.strip("<>")] = counts.get(label.strip("<>"), 0) + 1
        pos = end
    out.append(text[pos:])
    return "".join(out), counts


class RedactSecretsParams(RowParams):
    column: str = Field("content", description="the text to redact (content; code after extract_functions)")
    parse_limits_entropy: bool = Field(True, description="redact high-entropy strings only inside string "
                                                         "literals and comments, where a grammar can tell")


class RedactSecrets(Stage):
    """Replaces keys, tokens, passwords, private keys, e-mails and IPs with placeholders."""

    name = "redact_secrets"
    Params = RedactSecretsParams
    resources = Resources(num_cpus=1, batch_size=128)

    def reads(self) -> list[str]:
        return [self.params.column, "language"]

    def adds(self) -> list[Column]:
        return [Column("secrets_redacted", "metric", label="secrets and personal data redacted")]

    def process(self, batch: pa.Table) -> pa.Table:
        p = self.params
        texts = batch.column(p.column).to_pylist()
        languages = batch.column("language").to_pylist() if "language" in batch.column_names else [None] * len(texts)
        metas = batch.column("meta").to_pylist() if "meta" in batch.column_names else ["{}"] * len(texts)
        new, counts, new_meta = [], [], []
        for text, language, meta in zip(texts, languages, metas):
            if not text:
                new.append(text)
                counts.append(0)
                new_meta.append(meta)
                continue
            hits, _ = find(text, language if p.parse_limits_entropy else None)
            clean, found = redact(text, hits)
            new.append(clean)
            counts.append(sum(found.values()))
            record = ledger._loads(meta)
            if found:
                record["redactions"] = found
            new_meta.append(json.dumps(record, ensure_ascii=False))
        batch = ledger.set_column(batch, p.column, pa.array(new, pa.string()))
        batch = ledger.set_column(batch, "secrets_redacted", pa.array(counts, pa.int32()))
        return ledger.set_column(batch, "meta", pa.array(new_meta, pa.string()))
