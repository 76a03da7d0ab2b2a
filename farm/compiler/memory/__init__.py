"""Memory planning: liveness analysis over the final schedule and an arena with offsets."""

from farm.compiler.memory.planner import (
    ALIGNMENT,
    VIEW_OPS,
    Buffer,
    MemoryPlan,
    ValuePlacement,
    check_no_overlap,
    plan_memory,
)

__all__ = [
    "ALIGNMENT",
    "VIEW_OPS",
    "Buffer",
    "MemoryPlan",
    "ValuePlacement",
    "check_no_overlap",
    "plan_memory",
]
