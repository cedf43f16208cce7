"""Benchmarks of exported bundles and the servers that serve them."""
