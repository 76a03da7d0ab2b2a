"""Reduced precision: precision policy, FP16/BF16 weights, INT8 calibration, Q/DQ models and
accuracy budgets (see docs/PRECISION.md).

The builder calls, in order: :func:`extract_qdq` (before optimization), :func:`plan_precisions`
(after it: policy + INT8 scales), the autotuner with ``plan.node_precisions``, and
``plan.finalize`` (each layer's precision and why). ``build_with_budget`` wraps ``build`` when an
accuracy budget is set.
"""

from farm.compiler.precision.budget import AccuracyBudget, BudgetError, build_with_budget
from farm.compiler.precision.calibration import CALIBRATORS, CalibrationError, calibrate
from farm.compiler.precision.emulation import emulated_reference
from farm.compiler.precision.lowering import PrecisionPlan, plan_precisions
from farm.compiler.precision.policy import PRECISIONS, PrecisionError, PrecisionPolicy, parse_layer_precision
from farm.compiler.precision.qdq import ExplicitQuantization, extract_qdq
from farm.compiler.precision.quantize import ActivationQuant, fake_quantized_graph

__all__ = [
    "CALIBRATORS",
    "PRECISIONS",
    "AccuracyBudget",
    "ActivationQuant",
    "BudgetError",
    "CalibrationError",
    "ExplicitQuantization",
    "PrecisionError",
    "PrecisionPlan",
    "PrecisionPolicy",
    "build_with_budget",
    "calibrate",
    "emulated_reference",
    "extract_qdq",
    "fake_quantized_graph",
    "parse_layer_precision",
    "plan_precisions",
]
