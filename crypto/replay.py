"""Bounded, time-windowed nonce cache that refuses replayed envelopes.

A message is only accepted while its timestamp is within ±skew of our clock, so a nonce only
has to be remembered until `timestamp + skew`: after that the timestamp check alone refuses a
replay. Memory is therefore bounded by (message rate × 2·skew); a hard `max_entries` cap
refuses new messages (fail closed) rather than forgetting nonces that are still live.
"""

from __future__ import annotations

import heapq
import threading

from xgate.errors import EnvelopeRejected

DEFAULT_SKEW_MS = 5 * 60 * 1000


class ReplayGuard:
    """Thread-safe set of (key_id, nonce) seen within the skew window."""

    def __init__(self, skew_ms: int = DEFAULT_SKEW_MS, max_entries: int = 1_000_000) -> None:
        if skew_ms <= 0 or max_entries <= 0:
            raise ValueError("skew_ms and max_entries must be positive")
        self.skew_ms = skew_ms
        self.max_entries = max_entries
        self._lock = threading.Lock()
        self._expiry: dict[tuple[str, bytes], int] = {}
        self._heap: list[tuple[int, str, bytes]] = []

    def __len__(self) -> int:
        with self._lock:
            return len(self._expiry)

    def _purge(self, now_ms: int) -> None:
        while self._heap and self._heap[0][0] < now_ms:
            _, key_id, nonce = heapq.heappop(self._heap)
            self._expiry.pop((key_id, nonce), None)

    def check_and_record(self, key_id: str, nonce: bytes, timestamp_ms: int, now_ms: int) -> None:
        """Record the nonce; raise EnvelopeRejected if it was seen before or the cache is full.

        Call only after the signature verified, so forged envelopes cannot fill the cache.
        """
        entry = (key_id, bytes(nonce))
        expires = max(timestamp_ms, now_ms) + self.skew_ms
        with self._lock:
            self._purge(now_ms)
            if entry in self._expiry:
                raise EnvelopeRejected("replayed nonce: this envelope was already accepted", key_id=key_id)
            if len(self._expiry) >= self.max_entries:
                raise EnvelopeRejected("replay cache full: refusing until older nonces expire")
            self._expiry[entry] = expires
            heapq.heappush(self._heap, (expires, key_id, entry[1]))
