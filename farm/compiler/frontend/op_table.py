"""The table of supported ONNX ops for docs/OPS.md, generated from the reference's op table and
onnx's schemas, so the document cannot drift from the code::

    .venv/bin/python -m farm.compiler.frontend.op_table
"""

from __future__ import annotations

import onnx

from farm.compiler.frontend.loader import FRONTEND_OPS, MIN_OPSET, supported_op_types
from farm.compiler.frontend.versions import NEWEST_OPSET, has_function, runs_natively
from farm.compiler.ir.fused import FUSED_OPS

CANONICAL_NOTES: dict[str, str] = {
    "Squeeze": "axes as input 1",
    "Unsqueeze": "axes as input 1",
    "Split": "sizes as input 1, else attr num_outputs",
    "Softmax": "opset-13 meaning (one axis)",
    "LogSoftmax": "opset-13 meaning (one axis)",
    "Hardmax": "opset-13 meaning (one axis)",
    "Upsample": "becomes Resize",
    "Dropout": "becomes Identity unless training_mode may be true",
    "Scatter": "becomes ScatterElements",
    "Constant": "becomes a constant value",
    "Conv": "auto_pad resolved into pads; kernel_shape filled",
    "ConvTranspose": "auto_pad resolved into pads when static",
    "MaxPool": "auto_pad resolved into pads when static",
    "AveragePool": "auto_pad resolved into pads when static",
    "LpPool": "auto_pad resolved into pads when static",
    "Resize": "empty roi/scales/sizes become omitted inputs",
    "GroupNormalization": "scale/bias per group (18) or per channel (21), told apart by size",
}


def reference_family(op_type: str) -> str:
    """The reference module implementing ``op_type`` (or "frontend" for rewritten ops)."""
    if op_type in FRONTEND_OPS:
        return "frontend"
    from farm.compiler.reference.registry import lookup

    return lookup(op_type).__module__.rsplit(".", 1)[-1]


def onnx_versions(op_type: str) -> list[int]:
    """The op's schema versions the frontend reads natively at some opset of the accepted range."""
    supported = supported_op_types()
    versions: set[int] = set()
    for opset in range(MIN_OPSET, NEWEST_OPSET + 1):
        if not runs_natively(op_type, opset, supported):
            continue
        try:
            versions.add(onnx.defs.get_schema(op_type, opset, "").since_version)
        except onnx.defs.SchemaError:
            continue
    return sorted(versions)


# function ops whose bodies use ops the compiler does not run (listed so the table says so)
UNRUNNABLE_BODIES = {"Bernoulli": "random numbers (RandomUniformLike)", "SequenceMap": "sequences"}


def function_table() -> str:
    """One row per ONNX op the frontend expands into its function body, with the versions."""
    supported = supported_op_types()
    rows: dict[str, set[int]] = {}
    for schema in onnx.defs.get_all_schemas_with_history():
        if schema.domain or schema.name in UNRUNNABLE_BODIES:
            continue
        for opset in range(max(MIN_OPSET, schema.since_version), NEWEST_OPSET + 1):
            found = onnx.defs.get_schema(schema.name, opset, "")
            if found.since_version == schema.since_version and not runs_natively(schema.name, opset, supported) \
                    and has_function(schema.name, opset):  # fmt: skip
                rows.setdefault(schema.name, set()).add(schema.since_version)
    lines = ["| op | ONNX versions expanded into their function body |", "| --- | --- |"]
    lines += [f"| {op} | {', '.join(str(v) for v in sorted(vs))} |" for op, vs in sorted(rows.items())]
    return "\n".join(lines) + "\n"


def markdown_table() -> str:
    """One row per supported ONNX op: versions, reference module, canonical form."""
    lines = [
        f"| op | ONNX versions read natively (opsets {MIN_OPSET}-{NEWEST_OPSET}) | reference module | canonical form |",
        "| --- | --- | --- | --- |",
    ]
    for op_type in sorted(supported_op_types()):
        if op_type in FUSED_OPS and op_type != "Gelu":
            continue
        versions = ", ".join(str(v) for v in onnx_versions(op_type))
        lines.append(
            f"| {op_type} | {versions} | {reference_family(op_type)} | {CANONICAL_NOTES.get(op_type, '')} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown_table(), end="")
    print()
    print(function_table(), end="")
