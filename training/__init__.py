"""irec training: data → text → fine-tune → embed → cluster → evaluate → run folder (torch).

Imports nothing of the server but the bundle contract (server.bundle.manifest); the run folder
(training.run_folder) is what it hands to export. See ARCHITECTURE.md.
"""
