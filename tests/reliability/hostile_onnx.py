"""A corpus of hostile and malformed ONNX models, generated (never stored as binaries).

Each :class:`HostileModel` writes itself into a fresh folder (a model file plus whatever side files
it needs: external-data files, symlinks, a zip archive) and names the words the error must contain.
The test suite feeds every one to ``load_onnx`` and to the upload API; ``python
tests/reliability/hostile_onnx.py OUT_DIR`` writes the whole corpus to a folder for manual use
(e.g. ``farm inspect`` or ``curl``).
"""

from __future__ import annotations

import os
import random
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


@dataclass(frozen=True)
class HostileModel:
    """One hostile input: ``write(folder)`` creates it and returns the path to upload or load."""

    name: str
    write: Callable[[Path], Path]
    error_words: tuple[str, ...]  # lowercase words the load error must contain (any one of them)
    archive: bool = False  # the path is a .zip (upload API only; load_onnx takes .onnx files)


def _model(
    nodes: list,
    inputs: list,
    outputs: list,
    initializers: list | None = None,
    opset: int = 17,
    domains: tuple[tuple[str, int], ...] = (),
) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "hostile", inputs, outputs, initializers or [])
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, v) for d, v in domains]
    return helper.make_model(graph, opset_imports=opsets, producer_name="farm-hostile")


def _info(name: str, shape: list[int | str]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def valid_model() -> onnx.ModelProto:
    """A small valid model (Relu -> MatMul with a 4×3 weight) that the hostile variants start from."""
    weight = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3), "w")
    return _model(
        [
            helper.make_node("Relu", ["x"], ["r"], name="relu"),
            helper.make_node("MatMul", ["r", "w"], ["y"], name="mm"),
        ],
        [_info("x", ["batch", 4])],
        [_info("y", ["batch", 3])],
        [weight],
    )


def _save(model: onnx.ModelProto, folder: Path, name: str = "model.onnx") -> Path:
    path = folder / name
    path.write_bytes(model.SerializeToString())
    return path


def _bytes_writer(data: bytes) -> Callable[[Path], Path]:
    def write(folder: Path) -> Path:
        path = folder / "model.onnx"
        path.write_bytes(data)
        return path

    return write


def _model_writer(build: Callable[[], onnx.ModelProto]) -> Callable[[Path], Path]:
    return lambda folder: _save(build(), folder)


def _random_bytes() -> bytes:
    return random.Random(1234).randbytes(4096)


def _truncated() -> bytes:
    data = valid_model().SerializeToString()
    return data[: len(data) * 2 // 3]


def _cycle() -> onnx.ModelProto:
    return _model(
        [
            helper.make_node("Add", ["x", "b"], ["a"], name="add_a"),
            helper.make_node("Relu", ["a"], ["b"], name="relu_b"),
            helper.make_node("Identity", ["a"], ["y"], name="out"),
        ],
        [_info("x", [2])],
        [_info("y", [2])],
    )


def _self_loop() -> onnx.ModelProto:
    return _model(
        [helper.make_node("Add", ["x", "y"], ["y"], name="self")], [_info("x", [2])], [_info("y", [2])]
    )


def _dangling_input() -> onnx.ModelProto:
    return _model(
        [helper.make_node("Add", ["x", "nowhere"], ["y"], name="add")], [_info("x", [2])], [_info("y", [2])]
    )


def _dangling_output() -> onnx.ModelProto:
    return _model(
        [helper.make_node("Relu", ["x"], ["r"], name="relu")], [_info("x", [2])], [_info("missing", [2])]
    )


def _huge_dim() -> onnx.ModelProto:
    model = valid_model()
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 2**62
    return model


def _negative_dim() -> onnx.ModelProto:
    model = valid_model()
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_value = -7
    return model


def _huge_initializer_dims() -> onnx.ModelProto:
    model = valid_model()
    model.graph.initializer[0].dims[:] = [2**40, 2**40]
    return model


def _negative_initializer_dims() -> onnx.ModelProto:
    model = valid_model()
    model.graph.initializer[0].dims[:] = [-4, 3]
    return model


def _lying_raw_data() -> onnx.ModelProto:
    """An initializer declaring 2^28 float32 elements (1 GiB) that holds 48 bytes."""
    model = valid_model()
    model.graph.initializer[0].dims[:] = [2**14, 2**14]
    return model


def _lying_float_data() -> onnx.ModelProto:
    tensor = TensorProto(
        name="w", data_type=TensorProto.FLOAT, dims=[65536, 65536], float_data=[1.0, 2.0, 3.0]
    )
    model = valid_model()
    model.graph.initializer[0].CopyFrom(tensor)
    return model


def _external(location: str, length: int = 48, offset: int = 0) -> Callable[[Path], Path]:
    """The valid model with its weight moved to external data at ``location``."""

    def write(folder: Path) -> Path:
        model = valid_model()
        tensor = model.graph.initializer[0]
        tensor.ClearField("raw_data")
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
        return _save(model, folder)

    return write


def _external_symlink(folder: Path) -> Path:
    outside = folder.parent / f"{folder.name}-outside.bin"
    outside.write_bytes(np.arange(12, dtype=np.float32).tobytes())
    os.symlink(outside, folder / "weights.bin")
    return _external("weights.bin")(folder)


def _external_negative_offset(folder: Path) -> Path:
    (folder / "weights.bin").write_bytes(b"\0" * 48)
    return _external("weights.bin", offset=-5)(folder)


def _external_beyond_file(folder: Path) -> Path:
    (folder / "weights.bin").write_bytes(b"\0" * 16)
    return _external("weights.bin", length=48)(folder)


def _external_gigabytes(folder: Path) -> Path:
    (folder / "weights.bin").write_bytes(b"\0" * 48)
    path = _external("weights.bin", length=2**33)(folder)
    model = onnx.load(path, load_external_data=False)
    model.graph.initializer[0].dims[:] = [2**15, 2**16]  # 8 GiB of float32
    return _save(model, folder)


def _unknown_domain() -> onnx.ModelProto:
    return _model(
        [helper.make_node("EvilOp", ["x"], ["y"], name="evil", domain="com.attacker")],
        [_info("x", [2])],
        [_info("y", [2])],
        domains=(("com.attacker", 1),),
    )


def _unknown_op() -> onnx.ModelProto:
    return _model(
        [helper.make_node("RmRfSlash", ["x"], ["y"], name="rm")], [_info("x", [2])], [_info("y", [2])]
    )


def _opset(version: int) -> Callable[[], onnx.ModelProto]:
    def build() -> onnx.ModelProto:
        model = valid_model()
        model.opset_import[0].version = version
        return model

    return build


def _no_graph() -> bytes:
    return onnx.ModelProto(ir_version=8).SerializeToString()


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _deep_nesting() -> bytes:
    """If nodes nested 500 deep, hand-encoded (the protobuf library refuses to build it)."""
    graph = _field(1, _field(1, b"x") + _field(2, b"y") + _field(4, b"Identity"))
    for _ in range(500):
        attribute = _field(1, b"then_branch") + _field(6, graph) + _varint(20 << 3) + _varint(5)
        graph = _field(1, _field(1, b"c") + _field(2, b"y") + _field(4, b"If") + _field(5, attribute))
    opset = _field(2, b"") + _varint(2 << 3) + _varint(17)
    return _varint(1 << 3) + _varint(8) + _field(8, opset) + _field(7, graph)


def _zip_writer(
    members: dict[str, bytes], *, compression: int = zipfile.ZIP_DEFLATED
) -> Callable[[Path], Path]:
    def write(folder: Path) -> Path:
        path = folder / "model.zip"
        with zipfile.ZipFile(path, "w", compression=compression) as archive:
            for name, data in members.items():
                archive.writestr(name, data)
        return path

    return write


def _zip_bomb(folder: Path) -> Path:
    """A 256 MiB run of zeros compressed to about 256 KiB, next to a valid model."""
    path = folder / "model.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        archive.writestr("model.onnx", valid_model().SerializeToString())
        with archive.open("weights.bin", "w", force_zip64=True) as member:
            zeros = bytes(1 << 20)
            for _ in range(256):
                member.write(zeros)
    return path


def _zip_bomb_under_limit(folder: Path) -> Path:
    """3 MiB of zeros (under the 4 MiB upload limit of the tests) compressed about 1000:1."""
    return _zip_writer({"model.onnx": valid_model().SerializeToString(), "weights.bin": bytes(3 << 20)})(
        folder
    )


def _zip_symlink(folder: Path) -> Path:
    path = folder / "model.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("model.onnx", valid_model().SerializeToString())
        link = zipfile.ZipInfo("weights.bin")
        link.external_attr = 0o120777 << 16  # a symbolic link to /etc/passwd
        archive.writestr(link, "/etc/passwd")
    return path


def corpus() -> list[HostileModel]:
    """Every hostile model, each with the words its error must contain."""
    return [
        HostileModel(
            "random_bytes", _bytes_writer(_random_bytes()), ("protobuf", "graph", "malformed", "onnx")
        ),
        HostileModel("empty_file", _bytes_writer(b""), ("empty", "graph", "no graph")),
        HostileModel("truncated", _bytes_writer(_truncated()), ("protobuf", "truncated", "malformed")),
        HostileModel("no_graph", _bytes_writer(_no_graph()), ("graph",)),
        HostileModel("cycle", _model_writer(_cycle), ("cycle", "topolog", "before", "not produced", "order")),
        HostileModel(
            "self_loop", _model_writer(_self_loop), ("cycle", "topolog", "already", "produced", "order")
        ),
        HostileModel("dangling_input", _model_writer(_dangling_input), ("nowhere",)),
        HostileModel("dangling_output", _model_writer(_dangling_output), ("missing",)),
        HostileModel("huge_input_dim", _model_writer(_huge_dim), ("dimension", "large")),
        HostileModel("negative_input_dim", _model_writer(_negative_dim), ("dimension", "negative")),
        HostileModel(
            "huge_initializer_dims", _model_writer(_huge_initializer_dims), ("elements", "large", "dimension")
        ),
        HostileModel("negative_initializer_dims", _model_writer(_negative_initializer_dims), ("negative",)),
        HostileModel(
            "raw_data_declares_1GiB", _model_writer(_lying_raw_data), ("holds", "declares", "bytes")
        ),
        HostileModel(
            "float_data_declares_16GiB", _model_writer(_lying_float_data), ("holds", "declares", "elements")
        ),
        HostileModel("external_parent_escape", _external("../../etc/passwd"), ("leaves", "..")),
        HostileModel("external_absolute", _external("/etc/passwd"), ("absolute",)),
        HostileModel("external_symlink_outside", _external_symlink, ("outside", "symlink")),
        HostileModel("external_missing_file", _external("nothing-here.bin"), ("does not exist",)),
        HostileModel("external_nul_byte", _external("weights\0.bin"), ("nul", "does not exist")),
        HostileModel("external_past_end", _external_beyond_file, ("too short", "could only read")),
        HostileModel("external_declares_8GiB", _external_gigabytes, ("too short", "elements", "could only")),
        HostileModel("external_negative_offset", _external_negative_offset, ("negative",)),
        HostileModel("unknown_domain", _model_writer(_unknown_domain), ("com.attacker", "evilop", "domain")),
        HostileModel("unknown_op", _model_writer(_unknown_op), ("rmrfslash",)),
        HostileModel("opset_too_old", _model_writer(_opset(3)), ("opset",)),
        HostileModel("opset_too_new", _model_writer(_opset(99)), ("opset",)),
        HostileModel("opset_negative", _model_writer(_opset(-1)), ("opset",)),
        HostileModel("deep_nesting", _bytes_writer(_deep_nesting()), ("deep", "nest", "protobuf")),
        HostileModel("zip_bomb", _zip_bomb, ("zip bomb", "limit", "compressed"), archive=True),
        HostileModel(
            "zip_parent_escape",
            _zip_writer({"../../evil.onnx": valid_model().SerializeToString()}),
            ("unsafe",),
            archive=True,
        ),
        HostileModel(
            "zip_absolute_member",
            _zip_writer({"/tmp/evil.onnx": valid_model().SerializeToString()}),
            ("unsafe",),
            archive=True,
        ),
        HostileModel("zip_bomb_ratio", _zip_bomb_under_limit, ("zip bomb", "compressed"), archive=True),
        HostileModel("zip_symlink_member", _zip_symlink, ("link",), archive=True),
        HostileModel(
            "zip_not_a_zip",
            _bytes_writer_named("model.zip", b"PK\x03\x04 not really a zip" * 10),
            ("zip",),
            archive=True,
        ),
        HostileModel("zip_without_onnx", _zip_writer({"readme.txt": b"hello"}), (".onnx",), archive=True),
    ]


def _bytes_writer_named(name: str, data: bytes) -> Callable[[Path], Path]:
    def write(folder: Path) -> Path:
        path = folder / name
        path.write_bytes(data)
        return path

    return write


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "hostile-onnx")
    for case in corpus():
        folder = out / case.name
        folder.mkdir(parents=True, exist_ok=True)
        print(case.write(folder))
