"""redact_secrets: keys, tokens, passwords, private keys, e-mails and IPs become placeholders;
what is not a secret (alphabets, digit tables, code) stays."""
from __future__ import annotations

import json

import pyarrow as pa

from stages.filters.secrets import RedactSecrets, find, looks_random, redact

SOURCE = '''# contact: jane.doe@example.org, server 10.1.2.3
AWS_KEY = "AKIAIOSFODNN7EXAMPLE"
password = "hunter2hunter2x"
TOKEN = "ghp_aB3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY3zA5"
PEM = """-----BEGIN RSA PRIVATE KEY-----
MIIEpAIBAAKCAQEA1234567890abcdefghij
-----END RSA PRIVATE KEY-----"""
ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
HEX_DIGITS = "0123456789abcdefABCDEF"

def total(items):
    return sum(items)
'''


def test_secrets_become_placeholders_and_code_stays():
    out, counts = redact(SOURCE, find(SOURCE, "Python")[0])
    assert counts == {"EMAIL": 1, "IP": 1, "KEY": 3, "PASSWORD": 1}
    for secret in ("jane.doe@example.org", "10.1.2.3", "AKIAIOSFODNN7EXAMPLE", "hunter2hunter2x", "ghp_aB3dE5",
                   "MIIEpAIBAAKCAQEA", "BEGIN RSA PRIVATE KEY"):
        assert secret not in out
    assert 'PEM = """<KEY>"""' in out and 'password = "<PASSWORD>"' in out
    assert "ABCDEFGHIJKLMNOPQRSTUVWXYZ" in out and "0123456789abcdefABCDEF" in out
    assert out.endswith("def total(items):\n    return sum(items)\n")


def test_keys_must_look_random():
    assert looks_random("AKIAIOSFODNN7EXAMPLE") and looks_random("4f8b2c1d9e7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c")
    assert not looks_random("AKIAAQAAAAAABAAHAM0A") and not looks_random("0123456789abcdefABCDEF")


def test_the_stage_counts_in_meta():
    rows = [{"content": SOURCE, "language": "Python", "meta": "{}"}, {"content": "x = 1\n", "language": "Python",
                                                                      "meta": "{}"}]
    out = RedactSecrets({}).process(pa.Table.from_pylist(rows))
    assert out.column("secrets_redacted").to_pylist() == [6, 0]
    assert json.loads(out.column("meta").to_pylist()[0])["redactions"]["KEY"] == 3
    assert out.column("content").to_pylist()[1] == "x = 1\n"


def test_words_placeholders_and_code_are_spared_and_counted():
    """The gibberish check spares a high-entropy string that reads as words; documentation and
    template passwords are not credentials; a random key in a literal still goes."""
    from stages.filters.secrets import is_placeholder, reads_as_words

    assert reads_as_words("checkTheConfigurationFileForAllValues")
    assert not reads_as_words("Zx9Qm2Lk7PwR4tYv8NbCd3Hs") and not reads_as_words("deadbeef0123456789abcdef")
    assert is_placeholder("pass") and is_placeholder("{password}") and is_placeholder("'%(pw)s'")
    assert not is_placeholder("hunter2hunter2x")
    source = ('words = "TheQuickBrownFoxJumpsOverTheLazyDogWithVexingQuizPlans"\n'
              'key = "Zx9Qm2Lk7PwR4tYv8NbCd3HsQ1w2E3r4T5y6"\n'
              '# postgres://user:pass@localhost:5432/db\n'
              'dsn = "mongodb://{username}:{password}@{host}"\n')
    hits, spared = find(source, "Python")
    out, counts = redact(source, hits)
    assert "TheQuickBrownFoxJumpsOverTheLazyDogWithVexingQuizPlans" in out and "Zx9Qm2Lk7PwR4tYv8NbCd3Hs" not in out
    assert "user:pass@" in out and "{password}" in out
    assert spared["words"] == 1 and spared["placeholder"] >= 2 and counts == {"KEY": 1}
