"""The application layer: the `irec` commands, the demo, `irec eval`, `irec score`, the client.

Only this package (and benchmarks/) may import training/, export/ and server/ together;
nothing imports it back (import-linter contracts in pyproject.toml).
"""
