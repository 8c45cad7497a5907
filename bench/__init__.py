"""Tally's benchmark suite: `make bench` (python -m bench.run). Not tests: figures, not verdicts."""
