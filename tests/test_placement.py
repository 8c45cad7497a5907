"""Shard keys spread over Bytewax workers: the hash we predict is the one Bytewax uses.

The e2e test with `--processes 2` checks that both processes decide; this file
checks the naming rule itself, fast and without services.
"""

from flows.runtime.placement import WORKER_COUNTS, shard_key, shard_of_key, siphash13, worker_of


def test_the_hash_predicts_what_was_observed():
    # observed with bytewax 0.21.1: with keys "0".."3", `--processes 2` put every shard in
    # process 1 (it made all decisions, process 0 none); the hash says the same
    assert [worker_of(str(i), 2) for i in range(4)] == [1, 1, 1, 1]
    assert siphash13(b"") != siphash13(b"\xff")


def test_shard_keys_land_on_distinct_workers_and_name_their_shard():
    for shards in (2, 4, 8):
        keys = [shard_key(i) for i in range(shards)]
        assert [shard_of_key(k) for k in keys] == list(range(shards))
        for workers in WORKER_COUNTS:
            assert [worker_of(k, workers) for k in keys] == [i % workers for i in range(shards)]
