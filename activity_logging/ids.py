"""Record ids: time-ordered UUIDs (version 7) made without a lock or a random call per id.

Pure; imports only ``os``.
"""

from __future__ import annotations

import os


class IdFactory:
    """Makes time-ordered UUIDs (version 7, RFC 9562) from a record's own creation time.

    The 48-bit millisecond timestamp and a 12-bit sub-millisecond fraction come from
    ``record.created``; the remaining 62 bits are 42 random bits fixed per producer and the
    low 20 bits of the producer's sequence number, so ids are unique without a lock.
    Not thread-safe: the ``Snapshotter`` that owns it runs under the handler's lock.
    """

    def __init__(self) -> None:
        node = int.from_bytes(os.urandom(8), "big") & ((1 << 42) - 1)
        # group 4 = variant (0b10) + top 14 node bits; group 5 = low 28 node bits + 20 seq bits
        self._group4 = "-%04x-" % (0x8000 | (node >> 28))
        self._node_low = (node & ((1 << 28) - 1)) << 20
        self._ms = -1
        self._prefix = ""

    def make(self, ts_us: int, seq: int) -> str:
        """Return the canonical string form of the UUID for a record created at ``ts_us``."""
        ms = ts_us // 1000
        if ms != self._ms:
            self._ms = ms
            self._prefix = "%08x-%04x-7" % ((ms >> 16) & 0xFFFFFFFF, ms & 0xFFFF)  # noqa: UP031
        return "%s%03x%s%012x" % (  # noqa: UP031 - one format op is the cheapest here
            self._prefix, ((ts_us - ms * 1000) * 4096) // 1000, self._group4,
            self._node_low | (seq & 0xFFFFF),
        )
