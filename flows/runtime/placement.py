"""Names for the engine's shard keys that Bytewax spreads evenly over its workers.

Bytewax sends a keyed item to worker `hash(key) % workers`, where the hash is
Rust's DefaultHasher: SipHash-1-3 with zero keys over the key's bytes and a
0xFF terminator. Shard keys named "0".."3" all hash to worker 1 of 2, so a
second process would get no engine work. The names here are chosen so that
shard i lands on worker i % W for 2 and 4 workers (and any divisor of them).

Where a shard runs never changes what it decides; only the speed depends on it.
If a future Bytewax build hashed differently, the spread would degrade, and
tests/test_placement.py would say so.
"""

from __future__ import annotations

from functools import lru_cache

_MASK = (1 << 64) - 1
WORKER_COUNTS = (2, 4)


def _rotl(x: int, bits: int) -> int:
    return ((x << bits) | (x >> (64 - bits))) & _MASK


def siphash13(data: bytes) -> int:
    """SipHash-1-3 with keys (0, 0), as Rust's std DefaultHasher computes it."""
    v0, v1, v2, v3 = 0x736F6D6570736575, 0x646F72616E646F6D, 0x6C7967656E657261, 0x7465646279746573

    def rounds(count: int) -> None:
        nonlocal v0, v1, v2, v3
        for _ in range(count):
            v0 = (v0 + v1) & _MASK; v1 = _rotl(v1, 13) ^ v0; v0 = _rotl(v0, 32)  # noqa: E702
            v2 = (v2 + v3) & _MASK; v3 = _rotl(v3, 16) ^ v2  # noqa: E702
            v0 = (v0 + v3) & _MASK; v3 = _rotl(v3, 21) ^ v0  # noqa: E702
            v2 = (v2 + v1) & _MASK; v1 = _rotl(v1, 17) ^ v2; v2 = _rotl(v2, 32)  # noqa: E702

    tail = len(data) - len(data) % 8
    for i in range(0, tail, 8):
        word = int.from_bytes(data[i:i + 8], "little")
        v3 ^= word
        rounds(1)
        v0 ^= word
    last = ((len(data) & 0xFF) << 56) | int.from_bytes(data[tail:], "little")
    v3 ^= last
    rounds(1)
    v0 ^= last
    v2 ^= 0xFF
    rounds(3)
    return v0 ^ v1 ^ v2 ^ v3


def worker_of(key: str, workers: int) -> int:
    """The worker Bytewax routes a keyed item to (a Rust `String` hashes as bytes + 0xFF)."""
    return siphash13(key.encode() + b"\xff") % workers


@lru_cache(maxsize=None)
def shard_key(shard: int) -> str:
    """"<shard>.<n>": the first name whose worker is shard % W for every W in WORKER_COUNTS."""
    n = 0
    while not all(worker_of(f"{shard}.{n}", w) == shard % w for w in WORKER_COUNTS):
        n += 1
    return f"{shard}.{n}"


def shard_of_key(key: str) -> int:
    return int(key.split(".", 1)[0])
