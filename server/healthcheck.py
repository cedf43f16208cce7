"""Exit 0 when the server's grpc.health.v1 says SERVING (Docker HEALTHCHECK, probes)."""

from __future__ import annotations

import argparse
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server.config import default_target


def main() -> int:
    """Check one target; print the status."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target", default=default_target(), help="server HOST:PORT")
    parser.add_argument("--service", default="", help="service name ('' = whole server)")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds")
    args = parser.parse_args()
    with grpc.insecure_channel(args.target) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout
            )
        except grpc.RpcError as exc:
            print(f"unhealthy: {exc.code().name}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    print(status)
    return 0 if response.status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    sys.exit(main())
