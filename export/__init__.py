"""irec export: a run folder → a versioned, self-verifying serving bundle.

Reads training.run_folder, writes what server.bundle.manifest describes. May import training,
the server's bundle package (manifest, loader, text encoder, new items) and its engine
(server.core.engine), never the server's front ends; see ARCHITECTURE.md.
"""
