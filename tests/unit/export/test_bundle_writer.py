from __future__ import annotations

import json
import shutil

import pytest

from export.bundle_writer import ExportOptions, export_run, verify_bundle
from export.parity import ParityError, check_parity
from server import manifest as fmt
from server.manifest import ParityReport


def test_manifest_lists_every_file_with_its_sha256(bundle_dir):
    manifest = fmt.read_manifest(bundle_dir)
    on_disk = {
        p.relative_to(bundle_dir).as_posix()
        for p in bundle_dir.rglob("*")
        if p.is_file() and p.name != fmt.MANIFEST_FILE
    }
    assert set(manifest.files) == on_disk
    for name, digest in manifest.files.items():
        assert fmt.sha256_file(bundle_dir / name) == digest
    assert manifest.schema_version == fmt.SCHEMA_VERSION
    assert manifest.dimension == 32 and manifest.num_items == 360 and manifest.num_clusters == 12
    assert set(manifest.encoders) == {"int8", "fp16"}
    assert set(manifest.parity) == {"int8", "fp16"}
    assert manifest.parity["int8"].cosine_mean >= manifest.parity["int8"].threshold_mean
    assert manifest.training["hnsw_recall_at_10"] >= 0.9
    assert "OK" in verify_bundle(bundle_dir)


def test_int8_encoder_is_really_quantized(bundle_dir):
    import onnx

    model = onnx.load(str(bundle_dir / fmt.ENCODER_INT8_FILE))
    ops = {node.op_type for node in model.graph.node}
    assert ops & {
        "MatMulInteger",
        "DynamicQuantizeLinear",
        "QLinearMatMul",
        "DynamicQuantizeMatMul",
    }
    outputs = [o.name for o in model.graph.output]
    assert outputs == ["embedding"]


def test_failed_parity_refuses_export_and_keeps_the_old_bundle(trained_run, bundle_dir, tmp_path):
    target = tmp_path / "served"
    shutil.copytree(bundle_dir, target)
    before = (target / fmt.MANIFEST_FILE).read_text()
    with pytest.raises(ParityError, match="parity gate"):
        export_run(trained_run, target, ExportOptions(parity_mean=1.01, fp16=False))
    assert (target / fmt.MANIFEST_FILE).read_text() == before
    assert not (tmp_path / ".served.staging").exists()
    assert "OK" in verify_bundle(target)


def test_check_parity_thresholds():
    good = ParityReport(
        cosine_min=0.95, cosine_mean=0.99, num_texts=10, threshold_min=0.9, threshold_mean=0.98
    )
    check_parity("int8", good)
    per_tensor_like = ParityReport(0.863, 0.953, 52, 0.9, 0.98)
    with pytest.raises(ParityError, match="mean 0.9530"):
        check_parity("int8", per_tensor_like)


def test_export_of_a_folder_that_is_not_a_run(tmp_path):
    from export.bundle_writer import ExportError

    with pytest.raises(ExportError, match="run.json: missing"):
        export_run(tmp_path, tmp_path / "out")


def test_manifest_round_trip(bundle_dir):
    raw = json.loads((bundle_dir / fmt.MANIFEST_FILE).read_text())
    assert (
        fmt.Manifest.from_dict(raw).to_json()
        == fmt.Manifest.from_dict(json.loads(fmt.Manifest.from_dict(raw).to_json())).to_json()
    )


def test_new_items_in_a_text_encoder_bundle(trained_run, tmp_path):
    import numpy as np

    from server.bundle import load_bundle

    new_items = tmp_path / "new.csv"
    new_items.write_text("item_id,title,categories\nfresh,The Blue Quartet,Jazz\n")
    export_run(trained_run, tmp_path / "b", ExportOptions(new_items=new_items, fp16=False))
    bundle = load_bundle(tmp_path / "b", device="cpu")
    row = bundle.row_of_item["fresh"]
    served = bundle.encoder.encode([bundle.items[row].text])[0]
    assert float(np.dot(served, bundle.item_embeddings[row])) > 0.95
