"""The gRPC front ends: the server (app), the recsys.v1 and KServe v2 servicers, interceptors.

Each servicer only converts protobuf ↔ domain objects and maps errors (calls); the work
goes through server.core.dispatch, which every front end shares. Nothing below this
package imports protobuf or gRPC code.
"""
