"""Exact k-smallest selection over a whole dataset, without gathering it.

A global filter ("keep the top 30% by score") must not depend on how rows fall into
blocks or workers, and no process may hold every score. Radix selection does both:
each row has a key of 16-bit digits (unique, e.g. an order-preserving score followed
by a hash of sample_id); one pass per digit, every part counts its rows per value of
the next digit among the rows that share the prefix found so far, and the driver
adds up 65,536 counts per pass to fix one more digit of the k-th smallest key.
"""
from __future__ import annotations

import hashlib
from typing import Callable

import numpy as np
import pyarrow as pa

from . import fs
from .watchdog import gather

Keys = Callable[[pa.Table], np.ndarray]  # table -> (rows, digits) uint16; rows without a key: leave them out


def _histogram(part, keys: Keys, prefix: tuple[int, ...], columns: list[str] | None) -> np.ndarray:
    if isinstance(part, str):
        import pyarrow.parquet as pq

        filesystem, path = fs.resolve(part)
        table = pq.read_table(path, filesystem=filesystem, columns=columns)
    else:
        table = part
    k = keys(table)
    match = np.all(k[:, : len(prefix)] == np.array(prefix, dtype=np.uint16), axis=1) if prefix else \
        np.ones(len(k), bool)
    return np.bincount(k[match, len(prefix)], minlength=1 << 16)


def kth_smallest(parts: list, keys: Keys, k: int, digits: int,
                 columns: list[str] | None = None) -> tuple[int, ...] | None:
    """The k-th smallest key (1-based) among all rows of all parts; None when k < 1.
    Rows whose key is <= it are exactly the k smallest. columns: all that keys() reads."""
    import ray

    if k < 1:
        return None
    task = ray.remote(_histogram)
    prefix: tuple[int, ...] = ()
    remaining = k
    for _ in range(digits):
        counts = np.sum(gather([task.remote(p, keys, prefix, columns) for p in parts]), axis=0)
        if remaining > counts.sum():
            raise ValueError(f"asked for the {k}th smallest of fewer rows")
        cumulative = np.cumsum(counts)
        digit = int(np.searchsorted(cumulative, remaining))
        remaining -= int(cumulative[digit - 1]) if digit else 0
        prefix += (digit,)
    return prefix


def at_most(k: np.ndarray, cutoff: tuple[int, ...] | None) -> np.ndarray:
    """Rows whose key is <= cutoff, lexicographically."""
    if cutoff is None:
        return np.zeros(len(k), bool)
    less = np.zeros(len(k), bool)
    equal = np.ones(len(k), bool)
    for j, c in enumerate(cutoff):
        less |= equal & (k[:, j] < c)
        equal &= k[:, j] == c
    return less | equal


def descending_digits(values: np.ndarray) -> np.ndarray:
    """(n, 2) uint16 digits that sort float32 values from largest to smallest."""
    bits = np.asarray(values, dtype=np.float32).view(np.uint32)
    ascending = np.where(bits >> 31, ~bits, bits | np.uint32(1 << 31))
    d = ~ascending
    return np.stack([d >> 16, d & 0xFFFF], axis=1).astype(np.uint16)


def id_digits(ids: list[str]) -> np.ndarray:
    """(n, 4) uint16 digits of a 64-bit hash of each id: a fixed, layout-free tie-break."""
    raw = b"".join(hashlib.blake2b(i.encode(), digest_size=8).digest() for i in ids)
    return np.frombuffer(raw, dtype=">u2").reshape(len(ids), 4).astype(np.uint16)

