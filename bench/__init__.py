"""`make bench`: every speed, size and drift figure in one run, written to bench/results.json."""
