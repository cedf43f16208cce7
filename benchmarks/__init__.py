"""Benchmarks of the trained models, exported bundles and the servers that serve them.

Each module is one `python -m benchmarks.NAME` command that prints a table. They sit
beside the libraries, not inside them: the wheel does not ship them.
"""
