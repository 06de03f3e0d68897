"""Input and output helpers for an interpreter (pycoral.adapters.common)."""

from __future__ import annotations

from typing import Any

import numpy as np


def input_details(interpreter: Any, key: str) -> Any:
    """One field (`shape`, `index`, `quantization`...) of the model's first input."""
    return interpreter.get_input_details()[0][key]


def input_size(interpreter: Any) -> tuple[int, int]:
    """(width, height) of the image input, the order PIL's `resize` takes."""
    _, height, width, _ = input_details(interpreter, "shape")
    return int(width), int(height)


def input_tensor(interpreter: Any) -> np.ndarray:
    """A writable view of the first input, without the batch dimension."""
    return interpreter.tensor(input_details(interpreter, "index"))()[0]


def set_input(interpreter: Any, data: Any) -> None:
    """Copy an image (PIL image or array of the input's size) into the input tensor."""
    input_tensor(interpreter)[:, :] = np.asarray(data)


def output_tensor(interpreter: Any, i: int) -> np.ndarray:
    """The i-th output as it is (quantized values for a quantized model)."""
    return interpreter.tensor(interpreter.get_output_details()[i]["index"])()
