"""The gRPC-free core: plain Python and numpy in, plain results out.

Dispatch (admission, deadlines, batching, workers), the model slot (the served bundle
and its hot swap), the batcher, the engine (encode, assign, retrieve), per-interest
answers and the live catalogue.
"""
