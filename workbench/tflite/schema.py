"""The TFLite flatbuffer schema (generated Python object API) and name lookups for its enums.

The schema ships with `ai-edge-litert`, a hard dependency, so it is available even when the
interpreter itself comes from `tflite_runtime` (which does not ship it).
"""

from __future__ import annotations

import numpy as np
from ai_edge_litert import schema_py_generated as fb

__all__ = [
    "DTYPE_OF_TENSOR_TYPE",
    "TENSOR_TYPE_OF_DTYPE",
    "builtin_code",
    "builtin_name",
    "fb",
    "tensor_type_name",
]


def _enum_names(enum_class: type) -> dict[int, str]:
    return {value: name for name, value in vars(enum_class).items() if not name.startswith("_")}


_BUILTIN_NAMES = _enum_names(fb.BuiltinOperator)
_TENSOR_TYPE_NAMES = _enum_names(fb.TensorType)

TENSOR_TYPE_OF_DTYPE: dict[np.dtype, int] = {
    np.dtype(np.float32): fb.TensorType.FLOAT32,
    np.dtype(np.float16): fb.TensorType.FLOAT16,
    np.dtype(np.int32): fb.TensorType.INT32,
    np.dtype(np.uint8): fb.TensorType.UINT8,
    np.dtype(np.int8): fb.TensorType.INT8,
    np.dtype(np.int16): fb.TensorType.INT16,
    np.dtype(np.int64): fb.TensorType.INT64,
    np.dtype(np.bool_): fb.TensorType.BOOL,
}
DTYPE_OF_TENSOR_TYPE: dict[int, np.dtype] = {v: k for k, v in TENSOR_TYPE_OF_DTYPE.items()}


def builtin_code(opcode: fb.OperatorCodeT) -> int:
    """The operator's builtin code.

    Schema v3a moved codes above 127 to `builtinCode` and left `deprecatedBuiltinCode` at 127
    (PLACEHOLDER_FOR_GREATER_OP_CODES); older files only set the deprecated field.
    """
    return max(int(opcode.builtinCode), int(opcode.deprecatedBuiltinCode))


def builtin_name(code: int) -> str:
    """`CONV_2D` for 3, and so on; unknown codes (a newer schema) keep their number."""
    return _BUILTIN_NAMES.get(code, f"BUILTIN_{code}")


def tensor_type_name(tensor_type: int) -> str:
    """`UINT8` for 3, and so on."""
    return _TENSOR_TYPE_NAMES.get(tensor_type, f"TYPE_{tensor_type}")
