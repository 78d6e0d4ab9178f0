"""Packages are untrusted input (issue 11, item 3): weight files stay inside the package, the
checksum covers the whole file, headers are checked against the manifest before anything is
allocated, and every malformed manifest or weight file raises our own errors (fuzzed)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import struct
import zlib

import numpy as np
import pytest
import safetensors.numpy
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgecaffe.model.errors import ModelError
from edgecaffe.model.package import PackageError, WeightFileError, open_package, split
from edgecaffe.model.package.tensorfile import MAX_HEADER_BYTES, read_tensors, write_tensors


@pytest.fixture(scope="module")
def pristine(tmp_path_factory, zoo_model):
    prototxt, caffemodel = zoo_model("TinyAlex")
    return split([prototxt, caffemodel], tmp_path_factory.mktemp("trust") / "pkg").directory


@pytest.fixture
def package(pristine, tmp_path):
    copy = tmp_path / "pkg"
    shutil.copytree(pristine, copy)
    return copy


def _manifest(folder):
    return yaml.safe_load((folder / "manifest.yaml").read_text())


def _set_file(folder, layer, file):
    manifest = _manifest(folder)
    entry = next(e for e in manifest["layers"] if e["name"] == layer)
    entry["weights"]["file"] = file
    (folder / "manifest.yaml").write_text(yaml.safe_dump(manifest))


@pytest.mark.parametrize("file", ["/etc/passwd", "../outside.safetensors",
                                  "weights/../../outside.safetensors", "weights/../../../../x",
                                  "./../x", "weights\\..\\..\\outside.safetensors"])
def test_weight_files_outside_the_package_are_refused(package, file):
    _set_file(package, "conv1", file)
    with pytest.raises(PackageError, match="weights.file .* is refused: weight files must be "
                                           "inside the package folder"):
        open_package(package)


def test_the_refusal_does_not_reveal_whether_a_file_exists_elsewhere(package, tmp_path):
    (tmp_path / "exists.safetensors").write_bytes(b"secret")
    messages = []
    for name in ("exists", "missing"):
        _set_file(package, "conv1", f"../{name}.safetensors")
        with pytest.raises(PackageError) as error:
            open_package(package)
        messages.append(str(error.value).replace(name, "NAME"))
    assert messages[0] == messages[1]


def test_a_symlink_leaving_the_package_is_refused_before_it_is_opened(package, tmp_path,
                                                                      monkeypatch):
    target = package / "weights" / "001_conv1.safetensors"
    outside = tmp_path / "outside.safetensors"
    outside.write_bytes(target.read_bytes())  # even a valid copy of the right file
    target.unlink()
    target.symlink_to(outside)
    opened = []
    real_open = open

    def spy(path, *args, **kwargs):
        opened.append(os.path.realpath(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", spy)
    with pytest.raises(PackageError, match="is refused"):
        open_package(package)
    assert str(outside) not in opened


def test_a_symlink_inside_the_package_is_fine(package):
    target = package / "weights" / "001_conv1.safetensors"
    moved = package / "weights" / "real.safetensors"
    target.rename(moved)
    target.symlink_to(moved.name)
    assert set(open_package(package).load("conv1")) == {"weight", "bias"}


def _replace_in_file(path, old: bytes, new: bytes):
    data = path.read_bytes()
    assert data.count(old) == 1 and len(old) == len(new)
    path.write_bytes(data.replace(old, new))


def test_a_changed_header_dtype_is_caught_even_after_the_first_load(package):
    opened = open_package(package)
    opened.load("conv1")  # checksum verified here; later loads skip it
    _replace_in_file(package / "weights" / "001_conv1.safetensors",
                     b'"weight":{"dtype":"F32"', b'"weight":{"dtype":"I32"')
    with pytest.raises(WeightFileError, match="tensor 'weight' is I32 .* the manifest says "
                                              "F32"):
        opened.load("conv1")


def test_a_changed_header_shape_is_caught(package):
    opened = open_package(package)
    opened.load("conv1")
    _replace_in_file(package / "weights" / "001_conv1.safetensors", b"[8,3,5,5]", b"[3,8,5,5]")
    with pytest.raises(WeightFileError, match=r"'weight' is F32 \[3, 8, 5, 5\], the manifest "
                                              r"says F32 \[8, 3, 5, 5\]"):
        opened.load("conv1")


def test_the_checksum_covers_the_header(package):
    """A change only the header's bytes show (a tab for a padding space: the same JSON)."""
    path = package / "weights" / "001_conv1.safetensors"
    data = bytearray(path.read_bytes())
    (length,) = struct.unpack("<Q", data[:8])
    assert data[8 + length - 1:8 + length] == b" ", "the header needs padding for this test"
    data[8 + length - 1] = ord("\t")
    path.write_bytes(bytes(data))
    np.testing.assert_array_equal(read_tensors(path)["weight"],  # still a valid file
                                  safetensors.numpy.load_file(str(path))["weight"])
    with pytest.raises(WeightFileError, match="checksum .* does not match .* altered"):
        open_package(package).load("conv1")


def _file(tmp_path, header: bytes, data: bytes = b"", length: int | None = None):
    path = tmp_path / "w.safetensors"
    path.write_bytes(struct.pack("<Q", len(header) if length is None else length) + header + data)
    return path


@pytest.mark.parametrize(("header", "length", "message"), [
    (b"{}", 2**62, "header length 4611686018427387904 exceeds the file"),
    (b"[" * 100_000 + b"]" * 100_000, None, "nested deeper than 8 levels"),
    (json.dumps({"w": {"dtype": "F32", "shape": [2**40, 2**40],
                       "data_offsets": [0, 16]}}).encode(), None, "needs 4835703278458516698824704"
                                                                  " bytes"),
    (json.dumps({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}).encode(), None,
     "shape \\[-1\\] is not a list of sizes"),
    (json.dumps({"w": {"dtype": "X9", "shape": [1], "data_offsets": [0, 4]}}).encode(), None,
     "dtype 'X9' is not one of"),
    (json.dumps({"w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}}).encode(), None,
     "data_offsets \\[4, 0\\] is not"),
    (json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode(), None,
     "the tensors hold 8 bytes, the file's data section 4"),
    (json.dumps({"w": {"dtype": "F32", "shape": True, "data_offsets": [0, 4]}}).encode(), None,
     "shape True is not a list"),
    (json.dumps([1, 2]).encode(), None, "expected a JSON object"),
    (b"\xff\xfe", None, "not JSON"),
])
def test_headers_are_validated_before_allocating(tmp_path, monkeypatch, header, length, message):
    path = _file(tmp_path, header, b"\0\0\0\0", length)
    allocations = []
    monkeypatch.setattr(np, "empty", lambda *a, **k: allocations.append(a))
    with pytest.raises(WeightFileError, match=message):
        read_tensors(path)
    assert allocations == []


def test_the_header_length_has_a_ceiling(tmp_path):
    path = _file(tmp_path, b"{}" + b" " * MAX_HEADER_BYTES)
    with pytest.raises(WeightFileError, match=f"exceeds {MAX_HEADER_BYTES}"):
        read_tensors(path)


def test_reading_is_one_copy_into_fresh_arrays(tmp_path):
    arrays = {"weight": np.arange(12, dtype=np.float32).reshape(3, 4)}
    write_tensors(tmp_path / "w.safetensors", arrays)
    back = read_tensors(tmp_path / "w.safetensors")["weight"]
    assert back.flags.owndata and back.flags.writeable and back.base is None
    np.testing.assert_array_equal(back, arrays["weight"])


@pytest.mark.parametrize("value", ["abc", True, None, float("nan"), [1.0]])
def test_a_kernel_number_of_the_wrong_kind_is_refused_at_open(package, value):
    manifest = _manifest(package)
    relu = next(e for e in manifest["layers"] if e["op"] == "ReLU")
    relu["attrs"]["negative_slope"] = value
    (package / "manifest.yaml").write_text(yaml.safe_dump(manifest))
    with pytest.raises(PackageError, match=f"layer '{relu['name']}': ReLU: attr "
                                           "'negative_slope' = .* must be a finite number"):
        open_package(package)


def _integer_attrs(folder):
    """(layer index, name, attr) of every integer attr the package's layers carry."""
    from edgecaffe.ops import get_op
    for index, entry in enumerate(_manifest(folder)["layers"]):
        for key in get_op(entry["op"]).integers:
            if key in entry.get("attrs", {}):
                yield index, entry["name"], key


@pytest.mark.parametrize("value", [1.5, 2.0, True, [1.5], "3"])
def test_an_integer_attr_of_the_wrong_kind_is_refused_at_open(package, value):
    # A float group or LRN size once reached numpy as a size (a bare TypeError in the fuzz).
    found = list(_integer_attrs(package))
    assert {key for _, _, key in found} >= {"group", "size", "kernel", "stride", "axis"}
    pristine_text = (package / "manifest.yaml").read_text()
    for index, name, key in found:
        manifest = yaml.safe_load(pristine_text)
        manifest["layers"][index]["attrs"][key] = value
        (package / "manifest.yaml").write_text(yaml.safe_dump(manifest))
        with pytest.raises(PackageError, match=f"layer '{name}': .*attr '{key}' = .* must be "
                                               "an integer"):
            open_package(package)


# --- fuzzing: only our errors come out ------------------------------------------------------

VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6),
                                                                       children, max_size=3),
    max_leaves=6)


def _paths(value, prefix=()):
    """Every (path, value) inside a YAML document."""
    yield prefix
    if isinstance(value, dict):
        for key, child in value.items():
            yield from _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from _paths(child, (*prefix, index))


def _replace(document, path, value):
    if not path:
        return value
    node = document
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
    return document


def _open_and_load(folder):
    """Open, load and free every layer, and run a forward pass when it is small."""
    opened = open_package(folder)
    for layer in opened.network.layers:
        opened.load(layer.name)
        opened.free(layer.name)
    network = opened.network
    if sum(network.blob_bytes(blob) for blob in network.blob_shapes) < 2**26:
        opened.forward(np.zeros(opened.input_shape, np.float32))


FUZZ = settings(max_examples=100, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


@FUZZ
@given(data=st.data())
def test_fuzzed_manifests_raise_only_our_errors(pristine, tmp_path_factory, data):
    folder = tmp_path_factory.mktemp("fuzz") / "pkg"
    shutil.copytree(pristine, folder)
    manifest = _manifest(pristine)
    for _ in range(data.draw(st.integers(1, 3))):
        paths = list(_paths(manifest))
        path = data.draw(st.sampled_from(paths))
        manifest = _replace(manifest, path, data.draw(VALUES))
    text = yaml.safe_dump(manifest)
    (folder / "manifest.yaml").write_text(text)
    with contextlib.suppress(ModelError):
        _open_and_load(folder)


@FUZZ
@given(text=st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_fuzzed_manifest_text_raises_only_our_errors(pristine, tmp_path_factory, text):
    folder = tmp_path_factory.mktemp("fuzz") / "pkg"
    shutil.copytree(pristine, folder)
    (folder / "manifest.yaml").write_bytes(b"format: edgecaffe-package/2\n" + text)
    with contextlib.suppress(ModelError):
        _open_and_load(folder)


@FUZZ
@given(data=st.data())
def test_fuzzed_weight_files_raise_only_our_errors(pristine, tmp_path_factory, data):
    """Byte edits, truncation and growth of a real weight file: our reader raises
    WeightFileError or returns exactly what the safetensors library reads (the oracle)."""
    original = (pristine / "weights" / "001_conv1.safetensors").read_bytes()
    content = bytearray(original)
    (length,) = struct.unpack("<Q", original[:8])
    for _ in range(data.draw(st.integers(1, 4))):
        where = data.draw(st.integers(0, 8 + length + 16))  # mostly the prefix and header
        kind = data.draw(st.sampled_from(["set", "cut", "grow"]))
        if kind == "set" and where < len(content):
            content[where] = data.draw(st.integers(0, 255))
        elif kind == "cut":
            del content[where:where + data.draw(st.integers(1, 64))]
        else:
            content[where:where] = data.draw(st.binary(min_size=1, max_size=16))
    path = tmp_path_factory.mktemp("fuzz") / "w.safetensors"
    path.write_bytes(bytes(content))
    try:
        ours = read_tensors(path)
    except WeightFileError:
        pass
    else:
        theirs = safetensors.numpy.load_file(str(path))
        assert set(ours) == set(theirs)
        for name in ours:
            np.testing.assert_array_equal(ours[name], theirs[name])
    folder = tmp_path_factory.mktemp("fuzz") / "pkg"
    shutil.copytree(pristine, folder)
    (folder / "weights" / "001_conv1.safetensors").write_bytes(bytes(content))
    try:
        _open_and_load(folder)
        assert bytes(content) == original  # only the unaltered file passes the checks
    except ModelError:
        pass


def test_a_format_1_package_still_opens(package):
    """Packages written before the whole-file checksum: data-only CRC, no dtypes."""
    manifest = _manifest(package)
    manifest["format"] = "edgecaffe-package/1"
    for entry in manifest["layers"]:
        weights = entry.get("weights")
        if weights:
            del weights["dtypes"]
            data = (package / weights["file"]).read_bytes()
            (length,) = struct.unpack("<Q", data[:8])
            weights["crc32"] = zlib.crc32(data[8 + length:])
    (package / "manifest.yaml").write_text(yaml.safe_dump(manifest))
    _open_and_load(package)


@pytest.mark.parametrize(("text", "message"), [
    ("mean-scalar: [abc, 1, 2]\n", r"mean-scalar\[0\]: expected `float`, got `str`"),
    ("max-memory-valgrind: lots\n", "max-memory-valgrind: expected `float | null`, got `str`"),
    ("mean-execution-time: -5\n", "mean-execution-time: expected `float` >= 0"),
    ("conv-layers: 7\n", "conv-layers: expected `array | null`, got `int`"),
    ("uses-result-vector: maybe\n", "uses-result-vector: expected `bool | null`, got `str`"),
])
def test_original_descriptions_are_checked_too(tmp_path, text, message):
    from edgecaffe.model.package.original import read_original

    (tmp_path / "description.yaml").write_text("network-file: a.prototxt\nmodel-file: "
                                               "a.caffemodel\n" + text)
    with pytest.raises(PackageError, match=f"description.yaml: {message}"):
        read_original(tmp_path)
