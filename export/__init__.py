"""irec export: a run folder → a versioned, self-verifying serving bundle.

Reads training.run_folder, writes what server.manifest describes. May import training
and the server's loader (server.bundle, server.engine, server.text_encoder), never the
server's front ends; see ARCHITECTURE.md.
"""
