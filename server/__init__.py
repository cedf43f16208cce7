"""irec's serving side: loads a bundle and answers gRPC requests.

Imports nothing from torch, transformers or the training code: a serving image
needs only onnxruntime, tokenizers, hnswlib, numpy and grpcio.
"""
