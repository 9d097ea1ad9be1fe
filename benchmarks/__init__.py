"""Throughput and memory harnesses. Each writes ``benchmarks/results/<name>.json``; none pass or fail on a time."""
