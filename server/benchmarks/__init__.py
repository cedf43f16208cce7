"""Benchmarks of the serving path (no torch): each prints a table from one command."""
