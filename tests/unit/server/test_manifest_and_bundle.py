from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from server.bundle import manifest as fmt
from server.bundle.loader import load_bundle
from server.errors import BundleError


@pytest.fixture()
def bundle_copy(bundle_dir, tmp_path):
    target = tmp_path / "bundle"
    shutil.copytree(bundle_dir, target)
    return target


def test_loads_and_is_consistent(bundle_dir):
    bundle = load_bundle(bundle_dir, device="cpu")
    assert len(bundle.items) == bundle.manifest.num_items
    assert bundle.centroids.shape == (12, 32)
    assert bundle.encoder.providers == ["CPUExecutionProvider"]
    vectors = bundle.encoder.encode([item.text for item in bundle.items[:8]])
    # The served encoder reproduces the exported item text embeddings (int8 vs torch fp32):
    # the head's item-text table in a head bundle, the item embeddings otherwise.
    texts = bundle.head.item_text if bundle.head is not None else bundle.item_embeddings
    cosines = (vectors * texts[:8]).sum(axis=1)
    assert cosines.min() > 0.9


def test_missing_folder():
    with pytest.raises(BundleError, match="bundle folder does not exist"):
        load_bundle(fmt.Path("/nonexistent/bundle"))


def test_corrupt_file_is_refused_naming_it(bundle_copy):
    path = bundle_copy / fmt.ITEM_EMBEDDINGS_FILE
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"item_embeddings\.npy: sha256 .* does not match"):
        load_bundle(bundle_copy)


def test_missing_file_is_refused(bundle_copy):
    (bundle_copy / "index" / "all.hnsw").unlink()
    with pytest.raises(BundleError, match=r"all\.hnsw: listed in the manifest but missing"):
        load_bundle(bundle_copy)


def test_bad_manifest_json_names_line(bundle_copy):
    (bundle_copy / fmt.MANIFEST_FILE).write_text('{\n"schema_version": 1,\n oops')
    with pytest.raises(BundleError, match=r"manifest\.json: not valid JSON \(line 3"):
        load_bundle(bundle_copy)


def test_unsupported_schema_and_missing_key(bundle_copy):
    path = bundle_copy / fmt.MANIFEST_FILE
    raw = json.loads(path.read_text())
    path.write_text(json.dumps({**raw, "schema_version": 99}))
    with pytest.raises(BundleError, match="schema_version 99 is not supported"):
        load_bundle(bundle_copy)
    del raw["dimension"]
    path.write_text(json.dumps(raw))
    with pytest.raises(BundleError, match="missing key 'dimension'"):
        load_bundle(bundle_copy)


def test_shape_mismatch_with_valid_checksums_is_refused(bundle_copy):
    # A self-consistent but wrong bundle: checksums updated, shapes not.
    path = bundle_copy / fmt.CENTROIDS_FILE
    np.save(path, np.zeros((3, 32), dtype=np.float32))
    manifest_path = bundle_copy / fmt.MANIFEST_FILE
    raw = json.loads(manifest_path.read_text())
    raw["files"][fmt.CENTROIDS_FILE] = fmt.sha256_file(path)
    manifest_path.write_text(json.dumps(raw))
    with pytest.raises(BundleError, match=r"centroids\.npy: shape \(3, 32\)"):
        load_bundle(bundle_copy)


def test_io_binding_path_gives_the_same_embeddings(bundle_dir):
    from server.bundle.text_encoder import TextEncoder

    bundle = load_bundle(bundle_dir, device="cpu")
    plain = bundle.encoder
    bound = TextEncoder(plain.tokenizer, plain.session, plain.variant, io_binding=True)
    texts = ["jazz quartet", "a much longer text about haunted crypts and rituals"]
    np.testing.assert_allclose(bound.encode(texts), plain.encode(texts), rtol=1e-6, atol=1e-6)
    assert plain.io_binding is False  # CPU default


def test_item_table_reads_back_what_it_packed_and_takes_additions() -> None:
    from server.bundle.loader import Item, ItemTable, PackedStrings

    texts = ["Amélie (2001)", "", "東京物語", "plain"]
    packed = PackedStrings(texts)
    assert [packed[i] for i in range(4)] == texts and packed[-1] == "plain"
    with pytest.raises(IndexError):
        packed[4]
    table = ItemTable(["a", "b", "c", "d"], ["A", "B", "C", "D"], texts)
    assert table[2] == Item("c", "C", "東京物語")
    assert table[1:3] == [Item("b", "B", ""), Item("c", "C", "東京物語")]
    table.append(Item("e", "É", "new text"))
    assert len(table) == 5 and table[4] == Item("e", "É", "new text") and table[-1].title == "É"
    assert [item.item_id for item in table] == ["a", "b", "c", "d", "e"]
