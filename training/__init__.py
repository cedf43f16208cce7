"""irec training: data → text → fine-tune → embed → cluster → evaluate (torch allowed here)."""
