"""Engine file format, runtime (ExecutionContext) and the device fingerprint."""

from farm.compiler.engine.fingerprint import device_fingerprint, fingerprint_id, fingerprint_mismatches
from farm.compiler.engine.format import DeviceMismatchError, read_manifest
from farm.compiler.engine.runtime import Binding, Engine, ExecutionContext, FeedError, Kernel
from farm.compiler.engine.serialize import EngineFormatError

__all__ = [
    "Binding",
    "DeviceMismatchError",
    "Engine",
    "EngineFormatError",
    "ExecutionContext",
    "FeedError",
    "Kernel",
    "device_fingerprint",
    "fingerprint_id",
    "fingerprint_mismatches",
    "read_manifest",
]
