"""The graph optimizer: one pass per file, run to a fixed point by the :class:`PassManager`.

    graph, report = optimize(graph)                  # the default pipeline on a copy of graph
    graph, report = optimize(graph, disabled={"horizontal_fusion"}, verify_each=True)
    print(report)                                    # one line per pass: "layernorm_fusion: fused 8 LayerNorm ..."
    report.to_dict()                                 # the same as JSON-able data

The pipeline order matters: cleanup and folding first (so patterns see constants and no
Identity/Dropout), then If inlining (folding decides the conditions of exporters' shape guards), pattern fusions (LayerNorm, GELU, Softmax) before attention fusion (which
matches the fused Softmax), attention before epilogue fusion (which would otherwise swallow the
mask Add into the scores MatMul), GEMM layout after epilogue fusion (it needs FusedGemm; the
epilogues it uncovers are fused in the next round), horizontal fusion after both (so Q/K/V projections already carry
their bias and Attention reads the Split outputs), packed attention after it (an Attention
reading all three parts of one Split reads the packed tensor instead), concat elision last.
"""

from __future__ import annotations

from collections.abc import Collection

from farm.compiler.ir import Graph
from farm.compiler.passes.attention_fusion import AttentionFusion
from farm.compiler.passes.base import GraphEdit, GraphView, Pass, PassResult, RewritePass
from farm.compiler.passes.batchnorm_folding import BatchNormFolding
from farm.compiler.passes.cleanup import Cleanup
from farm.compiler.passes.concat_elision import ConcatElision
from farm.compiler.passes.constant_folding import ConstantFolding
from farm.compiler.passes.dead_code import DeadCodeElimination
from farm.compiler.passes.epilogue_fusion import EpilogueFusion
from farm.compiler.passes.gelu_fusion import GeluFusion
from farm.compiler.passes.gemm_canonicalization import GemmCanonicalization
from farm.compiler.passes.gemm_layout import GemmLayout
from farm.compiler.passes.hardswish_fusion import HardSwishFusion
from farm.compiler.passes.horizontal_fusion import HorizontalFusion
from farm.compiler.passes.if_inlining import IfInlining
from farm.compiler.passes.layernorm_fusion import LayerNormFusion
from farm.compiler.passes.manager import OptimizeReport, PassError, PassManager, PassReport
from farm.compiler.passes.packed_attention import PackedAttention
from farm.compiler.passes.pad_fusion import PadFusion
from farm.compiler.passes.recurrent_fusion import RecurrentFusion
from farm.compiler.passes.softmax_fusion import SoftmaxFusion

__all__ = [
    "PASS_NAMES",
    "GraphEdit",
    "GraphView",
    "OptimizeReport",
    "Pass",
    "PassError",
    "PassManager",
    "PassReport",
    "PassResult",
    "RewritePass",
    "default_passes",
    "optimize",
]


def default_passes() -> list[Pass]:
    """A fresh instance of every pass, in pipeline order."""
    return [
        Cleanup(),
        ConstantFolding(),
        IfInlining(),  # after folding, which decides shape-guard conditions
        DeadCodeElimination(),
        PadFusion(),
        BatchNormFolding(),
        LayerNormFusion(),
        GeluFusion(),
        HardSwishFusion(),
        SoftmaxFusion(),
        AttentionFusion(),
        RecurrentFusion(),  # matches raw Gemm: before gemm_canonicalization
        GemmCanonicalization(),
        EpilogueFusion(),
        GemmLayout(),
        HorizontalFusion(),
        PackedAttention(),
        ConcatElision(),
    ]


PASS_NAMES: tuple[str, ...] = tuple(p.name for p in default_passes())


def optimize(
    graph: Graph, *, disabled: Collection[str] = (), verify_each: bool = False
) -> tuple[Graph, OptimizeReport]:
    """Run the default pass pipeline to a fixed point on a copy of ``graph``.

    ``disabled`` names passes to skip (an unknown name raises ValueError listing the valid ones);
    ``verify_each`` verifies the graph after every pass. Returns the optimized graph and a report of
    what each pass changed. The input graph is not modified.
    """
    optimized = graph.copy()
    report = PassManager(default_passes(), disabled=disabled, verify_each=verify_each).run(optimized)
    return optimized, report
