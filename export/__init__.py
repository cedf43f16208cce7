"""irec export: a trained run → a versioned, self-verifying serving bundle."""
