"""The PassManager and optimize(): fixed point, disabling by name, verification, the report."""

from __future__ import annotations

import json

import numpy as np
import pytest
from passes_graphs import Builder, assert_same_numbers

from farm.compiler import optimize
from farm.compiler.ir import Graph
from farm.compiler.passes import PASS_NAMES, Pass, PassError, PassManager, PassResult, default_passes


def conv_relu_graph() -> Graph:
    b = Builder()
    x = b.input("x", ("batch", 3, 8, 8))
    w = b.const(np.random.default_rng(0).standard_normal((4, 3, 3, 3)))
    c = b.op("Conv", [x, w], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}, shape=("batch", 4, 8, 8))
    i = b.op("Identity", [c], shape=("batch", 4, 8, 8))
    r = b.op("Relu", [i], shape=("batch", 4, 8, 8))
    return b.output(r)


def test_optimize_does_not_mutate_its_input_and_reports_each_pass() -> None:
    g = conv_relu_graph()
    before = [(n.op_type, list(n.inputs), list(n.outputs)) for n in g.nodes]
    optimized, report = optimize(g, verify_each=True)
    assert [(n.op_type, list(n.inputs), list(n.outputs)) for n in g.nodes] == before
    assert optimized.op_histogram() == {"FusedConv": 1}
    assert [p.name for p in report.passes] == list(PASS_NAMES)
    assert report["cleanup"].changes == {"removed Identity": 1}
    assert report["epilogue_fusion"].changes == {"fused FusedConv epilogues (Relu)": 1}
    assert report.converged and report.iterations == 2
    assert report.nodes_before == 3 and report.nodes_after == 1
    assert "cleanup: removed 1 Identity" in str(report)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["passes"][0]["changes"] == {"removed Identity": 1}
    assert all(p["seconds"] >= 0 and p["runs"] == 2 for p in data["passes"])
    assert_same_numbers(g, optimized, {"batch": 3})


def test_disabled_passes_are_skipped_and_listed() -> None:
    g = conv_relu_graph()
    optimized, report = optimize(g, disabled={"epilogue_fusion"})
    assert optimized.op_histogram() == {"Conv": 1, "Relu": 1}
    assert "epilogue_fusion" not in [p.name for p in report.passes]
    assert report.disabled == ["epilogue_fusion"]
    assert "disabled: epilogue_fusion" in str(report)


def test_unknown_pass_name_is_an_error_listing_valid_names() -> None:
    with pytest.raises(ValueError, match="unknown pass name.*'fuse_everything'.*valid names: cleanup, "):
        optimize(conv_relu_graph(), disabled=["fuse_everything"])


class BreaksGraph(Pass):
    """x => a dangling read (a deliberately broken pass)."""

    name = "breaks_graph"

    def run(self, graph: Graph) -> PassResult:
        graph.nodes[0].inputs[0] = "nowhere"
        result = PassResult()
        result.add("broke graphs")
        return result


def test_verify_each_names_the_pass_that_broke_the_graph() -> None:
    with pytest.raises(PassError, match="breaks_graph"):
        PassManager([BreaksGraph()], verify_each=True).run(conv_relu_graph())


class CountsDown(Pass):
    """never converges: always claims a change."""

    name = "counts_down"

    def run(self, graph: Graph) -> PassResult:
        result = PassResult()
        result.add("changed nothing really")
        return result


def test_iteration_limit_is_reported() -> None:
    report = PassManager([CountsDown()], max_iterations=3).run(conv_relu_graph())
    assert report.iterations == 3 and not report.converged
    assert report["counts_down"].changes == {"changed nothing really": 3}
    assert "iteration limit" in str(report)


def test_every_pass_states_its_rule() -> None:
    for p in default_passes():
        assert p.name and "=>" in p.rule(), p.name
