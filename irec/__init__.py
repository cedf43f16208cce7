"""The application layer: the `irec` commands, the demo, `irec eval` and `irec score`.

Only this package (and benchmarks/) may import training/, export/ and server/ together;
nothing imports it back (import-linter contracts in pyproject.toml).
"""
