"""irec's serving side: loads a bundle and answers gRPC requests.

Imports nothing from torch, transformers, training, export or irec: a serving image
needs only onnxruntime, tokenizers, hnswlib, numpy and grpcio. See ARCHITECTURE.md.
"""
