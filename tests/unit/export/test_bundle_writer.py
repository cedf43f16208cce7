from __future__ import annotations

import json
import shutil

import pytest

from export.bundle_writer import ExportOptions, export_run, verify_bundle
from export.parity import ParityError, check_parity
from server.bundle import manifest as fmt
from server.bundle.manifest import ParityReport


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
    # The gate the README states (mean 0.98 / min 0.90), not whatever the manifest says.
    for name, report in manifest.parity.items():
        assert (report.threshold_mean, report.threshold_min) == (0.98, 0.90), name
        assert report.cosine_mean >= 0.98 and report.cosine_min >= 0.90, (name, report)
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
    # What the writer put on disk is read and written back unchanged: no field lost,
    # renamed or re-typed (comparing a re-serialisation with itself could not show that).
    raw = json.loads((bundle_dir / fmt.MANIFEST_FILE).read_text())
    manifest = fmt.Manifest.from_dict(raw)
    assert json.loads(manifest.to_json()) == raw
    assert fmt.Manifest.from_dict(json.loads(manifest.to_json())) == manifest
    assert fmt.read_manifest(bundle_dir) == manifest


def test_served_int8_encoder_embeds_like_torch_measured_here(trained_run, bundle_dir):
    """The parity the README claims, measured independently of the export's own gate.

    Other texts than the gate's (item texts it did not pick, one-word and long texts),
    the fine-tuned torch model against the int8 encoder the server loads.
    """
    import numpy as np

    from server.bundle.loader import load_bundle
    from training.run_folder import RunFolder
    from training.torch_encoder import embed_texts, load_encoder

    bundle = load_bundle(bundle_dir, device="cpu")
    texts = [item.text for item in bundle.items[-48:]]
    texts += ["jazz", "space", "a quiet film about a haunted house and a jazz quartet " * 3]
    encoder, tokenizer = load_encoder(RunFolder(trained_run).model_dir)
    length = bundle.manifest.max_sequence_length
    torch_vectors = embed_texts(encoder, tokenizer, texts, length, progress=False)
    served = bundle.encoder.encode(texts)
    torch_vectors /= np.linalg.norm(torch_vectors, axis=1, keepdims=True)
    served = served / np.linalg.norm(served, axis=1, keepdims=True)
    cosines = (torch_vectors * served).sum(axis=1)
    assert cosines.mean() >= 0.98 and cosines.min() >= 0.90, (cosines.mean(), cosines.min())
    # And the manifest reports what the encoder really does (within 0.02 of this sample).
    assert abs(float(cosines.mean()) - bundle.manifest.parity["int8"].cosine_mean) < 0.02


def test_new_items_in_a_text_encoder_bundle(trained_run, tmp_path):
    import numpy as np

    from server.bundle.loader import load_bundle

    new_items = tmp_path / "new.csv"
    new_items.write_text("item_id,title,categories\nfresh,The Blue Quartet,Jazz\n")
    export_run(trained_run, tmp_path / "b", ExportOptions(new_items=new_items, fp16=False))
    bundle = load_bundle(tmp_path / "b", device="cpu")
    row = bundle.row_of_item["fresh"]
    served = bundle.encoder.encode([bundle.items[row].text])[0]
    # A new item enters by its text: the text embedding (or, in a head bundle, the head's
    # text table, whose projection is the item's vector) is the served encoder's.
    texts = bundle.head.item_text if bundle.head is not None else bundle.item_embeddings
    assert float(np.dot(served, texts[row])) > 0.95
