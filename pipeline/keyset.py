"""A set of strings in 8 bytes each: what the driver remembers of every unit and source of a run.

A run of millions of clips must not hold a Python string per clip on the driver, yet it has to
know which video ids it has seen (a manifest may name one twice) and which unit keys are its own
(to pick its records out of ``out``). A 64-bit digest per key does both: two of a million keys
share a digest with odds of about 3e-8.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

import numpy as np

_MERGE_EVERY = 4096  # keys held as Python ints (about 60 bytes each) before they join the sorted array


def digest(key: str) -> int:
    """The 64-bit digest of ``key`` (BLAKE2b)."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")


class KeySet:
    """Strings kept as 64-bit digests: a sorted uint64 array, plus the latest keys in a small set."""

    def __init__(self, keys: Iterable[str] = ()):
        self._sorted = np.empty(0, np.uint64)
        self._recent: set[int] = set()
        self.update(keys)

    def add(self, key: str) -> bool:
        """Add ``key``; False when it was there already."""
        d = digest(key)
        if d in self._recent or self._in_sorted(d):
            return False
        self._recent.add(d)
        if len(self._recent) >= _MERGE_EVERY:
            self._merge()
        return True

    def update(self, keys: Iterable[str]) -> int:
        """Add many keys at once (a lookup per batch, not per key); returns how many were new."""
        new = np.unique(_digests(keys))
        new = new[~self._in_sorted_many(new)]
        if len(new) < _MERGE_EVERY:  # a small batch waits in the recent set, as single keys do
            before = len(self._recent)
            self._recent.update(new.tolist())
            added = len(self._recent) - before  # counted before a merge empties the recent set
            if len(self._recent) >= _MERGE_EVERY:
                self._merge()
            return added
        # A large batch joins the sorted array at once: never a Python int per key.
        self._merge()
        new = new[~self._in_sorted_many(new)]
        merged = np.concatenate([self._sorted, new])
        merged.sort(kind="stable")
        self._sorted = merged
        return len(new)

    def mask(self, keys: Sequence[str]) -> np.ndarray:
        """Whether each of ``keys`` is in the set (bool array, in order)."""
        ds = _digests(keys)
        found = self._in_sorted_many(ds)
        if self._recent:
            found |= np.fromiter((d in self._recent for d in ds.tolist()), bool, len(ds))
        return found

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        d = digest(key)
        return d in self._recent or self._in_sorted(d)

    def __len__(self) -> int:
        return len(self._sorted) + len(self._recent)

    @property
    def nbytes(self) -> int:
        """Bytes of the sorted array (the recent set is at most a fixed number of keys)."""
        return self._sorted.nbytes

    def _in_sorted(self, d: int) -> bool:
        i = int(np.searchsorted(self._sorted, np.uint64(d)))
        return i < len(self._sorted) and int(self._sorted[i]) == d

    def _in_sorted_many(self, ds: np.ndarray) -> np.ndarray:
        if not len(self._sorted):
            return np.zeros(len(ds), bool)
        i = np.minimum(np.searchsorted(self._sorted, ds), len(self._sorted) - 1)
        return self._sorted[i] == ds

    def _merge(self) -> None:
        # The recent keys are not in the array (add checks): one new array, sorted in place, is all the
        # merge allocates.
        if not self._recent:
            return
        merged = np.empty(len(self._sorted) + len(self._recent), np.uint64)
        merged[: len(self._sorted)] = self._sorted
        merged[len(self._sorted) :] = np.fromiter(self._recent, np.uint64, len(self._recent))
        merged.sort(kind="stable")  # a sorted run and a short one: timsort merges them in linear time
        self._sorted, self._recent = merged, set()


def _digests(keys: Iterable[str]) -> np.ndarray:
    return np.fromiter((digest(key) for key in keys), np.uint64)
