"""The bundle: its manifest (the contract with export), the loader, and the parts it loads.

The text encoder (ONNX Runtime), the user head and the new-item rule. Training and export
read the manifest and the new-item rule from here; this package imports nothing from the
core or the front ends.
"""
