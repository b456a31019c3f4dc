"""Symbol shards and where Bytewax runs them.

A symbol's bar and gold state lives in one shard (``crc32(symbol) %
shards``); a shard is one Bytewax state key. Bytewax 0.21 places things on
workers by two fixed rules (checked against Bytewax itself in
``tests/test_shards.py``):

- a state key goes to worker ``SipHash-1-3(key) % workers`` (Rust's
  ``DefaultHasher`` with zero keys over the key's UTF-8 bytes and ``0xff``);
- the partitions of a fixed-partitioned source or sink go to worker
  ``index % workers``, ``index`` being the partition's place in the sorted
  list of partition names; a sink's item goes to partition ``part_fn(key) %
  len(parts)``.

Shard keys are therefore chosen so that shard ``i`` runs on worker ``i %
workers`` like partition ``i`` of a source or sink (for every worker count
dividing the shard count, or with more than 64 shards its largest divisor
up to 64): the file source reads each shard's
series in partition ``i`` and every sink sends shard ``i`` to partition ``i``,
so with one symbol per series a tick is parsed, built into bars and written
on one worker, never pickled to another process. Any other worker count
gives the same results, with more exchange between workers.
"""

from __future__ import annotations

import zlib
from functools import lru_cache

DEFAULT_SHARDS = 16

_M64 = (1 << 64) - 1


def shard_of(symbol: str, shards: int) -> int:
    """Stable across processes and runs (never Python's salted hash)."""
    return zlib.crc32(symbol.encode()) % shards


@lru_cache(maxsize=16)
def shard_keys(shards: int) -> tuple[str, ...]:
    """The state key of each shard: ``"iiii-j"``, sorted like ``i``, with
    the smallest ``j`` that puts it on worker ``i % workers``."""
    align = _alignment(shards)
    keys = []
    for i in range(shards):
        j = 0
        while bytewax_worker_of(f"{i:04d}-{j}", align) != i % align:
            j += 1
        keys.append(f"{i:04d}-{j}")
    return tuple(keys)


def shard_key(shard: int, shards: int) -> str:
    return shard_keys(shards)[shard]


def shard_index(key: str) -> int:
    """The shard number of a shard key (``"0003-17"`` -> 3; a plain
    ``"0003"`` also reads as 3). ValueError for any other string."""
    return int(key.split("-", 1)[0])


def _alignment(shards: int) -> int:
    """The largest divisor of `shards` up to 64: shard keys are aligned for
    every worker count dividing it (searching costs ~`align` hashes a key)."""
    return max(d for d in range(1, min(shards, 64) + 1) if shards % d == 0)


def bytewax_worker_of(key: str, workers: int) -> int:
    """The worker Bytewax 0.21 runs state key `key` on."""
    return _siphash13(key.encode() + b"\xff") % workers


def _rotl(x: int, b: int) -> int:
    return ((x << b) | (x >> (64 - b))) & _M64


def _siphash13(data: bytes) -> int:
    """SipHash-1-3 with the key (0, 0), as Rust's ``DefaultHasher::new()``."""
    v0, v1 = 0x736F6D6570736575, 0x646F72616E646F6D
    v2, v3 = 0x6C7967656E657261, 0x7465646279746573

    def sipround() -> None:
        nonlocal v0, v1, v2, v3
        v0 = (v0 + v1) & _M64
        v1 = _rotl(v1, 13) ^ v0
        v0 = _rotl(v0, 32)
        v2 = (v2 + v3) & _M64
        v3 = _rotl(v3, 16) ^ v2
        v0 = (v0 + v3) & _M64
        v3 = _rotl(v3, 21) ^ v0
        v2 = (v2 + v1) & _M64
        v1 = _rotl(v1, 17) ^ v2
        v2 = _rotl(v2, 32)

    n = len(data)
    end = n - n % 8
    for i in range(0, end, 8):
        m = int.from_bytes(data[i : i + 8], "little")
        v3 ^= m
        sipround()
        v0 ^= m
    last = ((n & 0xFF) << 56) | int.from_bytes(data[end:], "little")
    v3 ^= last
    sipround()
    v0 ^= last
    v2 ^= 0xFF
    sipround()
    sipround()
    sipround()
    return v0 ^ v1 ^ v2 ^ v3
