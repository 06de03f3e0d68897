"""Input and output helpers for an interpreter (pycoral.adapters.common).

Every public function of pycoral's module, with its signature, defaults and return values, so
scripts that feed images this way run unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np


def output_tensor(interpreter: Any, i: int) -> np.ndarray:
    """The i-th output as it is (quantized values for a quantized model), batch included."""
    return interpreter.tensor(interpreter.get_output_details()[i]["index"])()


def input_details(interpreter: Any, key: str) -> Any:
    """One field (`shape`, `index`, `dtype`, `quantization`...) of the model's first input."""
    return interpreter.get_input_details()[0][key]


def input_size(interpreter: Any) -> tuple[int, int]:
    """(width, height) of the image input: the order PIL's `resize` takes."""
    _, height, width, _ = input_details(interpreter, "shape")
    return int(width), int(height)


def input_tensor(interpreter: Any) -> np.ndarray:
    """A writable view of the first input without the batch dimension: [height, width, 3]."""
    return interpreter.tensor(input_details(interpreter, "index"))()[0]


def set_input(interpreter: Any, data: Any) -> None:
    """Copy an image (PIL image or array of the input's size) into the input tensor."""
    input_tensor(interpreter)[:, :] = np.asarray(data)


def set_resized_input(
    interpreter: Any, size: tuple[int, int], resize: Callable[[tuple[int, int]], Any]
) -> tuple[Any, tuple[float, float]]:
    """Fit an image of `size` (width, height) into the input, keeping its aspect ratio.

    The image is scaled by the largest factor that fits both sides, `resize((w, h))` makes
    the scaled image, which goes to the top-left corner; the rest of the input is zeros.
    Returns what `resize` returned and the (x, y) scale factors, which a detector's boxes
    need to be mapped back to the original image (pycoral's `detect.get_objects` takes them).
    """
    width, height = input_size(interpreter)
    w, h = size
    scale = min(width / w, height / h)
    w, h = int(w * scale), int(h * scale)
    tensor = input_tensor(interpreter)
    tensor.fill(0)
    channels = tensor.shape[-1]
    result = resize((w, h))
    tensor[:h, :w] = np.reshape(result, (h, w, channels))
    return result, (scale, scale)
