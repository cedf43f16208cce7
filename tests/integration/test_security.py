"""TLS, mutual TLS and bearer tokens against a real server, with certificates made by openssl."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import grpc
import pytest

from irec.client import RecommenderClient, make_request
from tests.conftest import background_server

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def issue(cwd: Path, name: str, ca: str, san: str | None = None) -> None:
    """Key + certificate `name` signed by CA `ca`."""
    openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        f"{name}.key",
        "-subj",
        f"/CN={name}",
        "-out",
        f"{name}.csr",
        cwd=cwd,
    )
    extra = []
    if san:
        (cwd / f"{name}.ext").write_text(f"subjectAltName={san}\n")
        extra = ["-extfile", f"{name}.ext"]
    openssl(
        "x509",
        "-req",
        "-in",
        f"{name}.csr",
        "-CA",
        f"{ca}.crt",
        "-CAkey",
        f"{ca}.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-out",
        f"{name}.crt",
        *extra,
        cwd=cwd,
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    for ca in ("ca", "rogue-ca"):
        openssl(
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            f"{ca}.key",
            "-subj",
            f"/CN={ca}",
            "-days",
            "1",
            "-out",
            f"{ca}.crt",
            cwd=d,
        )
    issue(d, "server", "ca", san="IP:127.0.0.1,DNS:localhost")
    issue(d, "client", "ca")
    issue(d, "rogue-client", "rogue-ca")
    return d


def ask(target: str, **options) -> int:
    with RecommenderClient(target, timeout_s=20, **options) as client:
        return len(client.recommend(make_request(["1"], k=2)).items)


def test_mutual_tls_accepts_our_client_and_refuses_others(bundle_dir, pki):
    with background_server(
        bundle_dir,
        tls_cert=pki / "server.crt",
        tls_key=pki / "server.key",
        tls_client_ca=pki / "ca.crt",
    ) as server:
        assert (
            ask(
                server.target,
                tls_ca=pki / "ca.crt",
                tls_cert=pki / "client.crt",
                tls_key=pki / "client.key",
            )
            == 2
        )
        for options in (
            {"tls_ca": pki / "ca.crt"},  # no client certificate
            {
                "tls_ca": pki / "ca.crt",
                "tls_cert": pki / "rogue-client.crt",
                "tls_key": pki / "rogue-client.key",
            },
            {},  # plaintext
        ):
            with pytest.raises(grpc.RpcError) as info:
                ask(server.target, **options)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_tls_with_a_wrong_ca_is_refused(bundle_dir, pki):
    with background_server(
        bundle_dir, tls_cert=pki / "server.crt", tls_key=pki / "server.key"
    ) as server:
        assert ask(server.target, tls_ca=pki / "ca.crt") == 2
        with pytest.raises(grpc.RpcError):
            ask(server.target, tls_ca=pki / "rogue-ca.crt")


def test_bearer_token(bundle_dir):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from server.generated.inference import grpc_service_pb2 as kpb
    from server.generated.inference import grpc_service_pb2_grpc as kpb_grpc
    from server.generated.recsys.v1 import recommender_pb2 as pb
    from server.generated.recsys.v1 import recommender_pb2_grpc as pb_grpc

    with background_server(bundle_dir, auth_token="s3cret") as server:
        assert ask(server.target, token="s3cret") == 2
        for token in (None, "wrong"):
            with pytest.raises(grpc.RpcError) as info:
                ask(server.target, token=token)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with grpc.insecure_channel(server.target) as channel:
            stream = pb_grpc.RecommenderServiceStub(channel).RecommendStream(
                iter([pb.RecommendRequest(history_item_ids=["1"])]), timeout=30
            )
            with pytest.raises(grpc.RpcError) as info:
                list(stream)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            # Probes carry no credentials: health stays open.
            status = (
                health_pb2_grpc.HealthStub(channel)
                .Check(health_pb2.HealthCheckRequest(), timeout=30)
                .status
            )
            assert status == health_pb2.HealthCheckResponse.SERVING
            # Admin and KServe RPCs are guarded too: refused without the token, served with it.
            admin = pb_grpc.RecommenderAdminStub(channel)
            kserve = kpb_grpc.GRPCInferenceServiceStub(channel)
            guarded = [
                lambda **kw: admin.ReloadBundle(pb.ReloadBundleRequest(path=""), **kw),
                lambda **kw: admin.RemoveItems(pb.RemoveItemsRequest(item_ids=["ghost"]), **kw),
                lambda **kw: kserve.ServerLive(kpb.ServerLiveRequest(), **kw),
                lambda **kw: kserve.ModelInfer(
                    kpb.ModelInferRequest(model_name="irec-encoder"), **kw
                ),
            ]
            for call in guarded:
                for metadata in ((), (("authorization", "Bearer wrong"),)):
                    with pytest.raises(grpc.RpcError) as info:
                        call(timeout=30, metadata=metadata)
                    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            good = (("authorization", "Bearer s3cret"),)
            # Past the token check each answers for itself: refusals of the request itself.
            for call, code in zip(
                guarded,
                [
                    grpc.StatusCode.INVALID_ARGUMENT,
                    grpc.StatusCode.NOT_FOUND,
                    None,
                    grpc.StatusCode.INVALID_ARGUMENT,
                ],
                strict=True,
            ):
                if code is None:
                    assert call(timeout=30, metadata=good).live
                    continue
                with pytest.raises(grpc.RpcError) as info:
                    call(timeout=30, metadata=good)
                assert info.value.code() == code, info.value.details()
