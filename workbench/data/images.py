"""Image decoding and preprocessing, shared by training, evaluation, `classify` and benchmarks.

One function turns a file into the exact array the model's input takes, so a model is always
evaluated on the same numbers it was trained on.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from workbench.core.errors import WorkbenchError

# Pillow warns about odd EXIF blocks and palette transparency; neither stops a decode. The
# filter is set once here, for warnings raised in Pillow only: `warnings.catch_warnings`
# around each decode is not thread-safe, and decoding runs in worker threads.
warnings.filterwarnings("ignore", module=r"PIL(\.|$)")

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}


# The raster formats workbench reads; Pillow would otherwise open whatever a file really is
# (an EPS named .png would run Ghostscript).
Image.init()  # register every plugin, so the list below holds what this Pillow can open
FORMATS = tuple(f for f in ("JPEG", "MPO", "PNG", "BMP", "GIF", "WEBP", "TIFF") if f in Image.OPEN)
# Decoding needs width x height x 3 bytes at least; above this many pixels an image is refused
# rather than risk the device's memory, except a JPEG, which its decoder can scale down while
# decoding (by 1/2, 1/4 or 1/8) until it fits.
MAX_PIXELS = 64_000_000


class InputSpec(Protocol):
    """What preprocessing needs of a model input (the runtime's `TensorSpec` has it)."""

    @property
    def shape(self) -> tuple[int, ...]: ...
    @property
    def dtype(self) -> np.dtype: ...


class ImageError(Exception):
    """An image file that cannot be decoded; the caller skips it with a warning."""


@dataclass(frozen=True)
class Preprocessing:
    """How a file becomes a model input.

    A quantized (uint8 or int8) input takes the pixel values themselves: full-integer
    converters calibrate the input quantization so that the pixel range 0..255 maps onto the
    whole integer range, whatever normalization the float model used ([-1, 1] or [0, 1]); the
    Coral models' scale 1/128 and zero point 128 are the [-1, 1] case. A float input gets
    (pixel - mean) / std, [-1, 1] by default (the MobileNet / EfficientNet-Lite convention).
    """

    width: int
    height: int
    dtype: str  # "uint8", "int8" or "float32": the input tensor's type
    resample: str = "bilinear"
    mean: float = 127.5
    std: float = 127.5
    # Let the JPEG decoder scale down (by 1/2, 1/4, 1/8) while decoding. Off: deployed models
    # get fully decoded images (pycoral's examples, MediaPipe, camera frames), and a scaled
    # decode moved held-out top-1 by up to 0.018 on 500-pixel photos. It was 1.6x faster to
    # decode there, 4x on 1600x1200 and 10x on 12-megapixel photos.
    draft: bool = False

    @classmethod
    def for_input(cls, spec: InputSpec, resample: str = "bilinear") -> Preprocessing:
        shape = spec.shape
        if len(shape) != 4 or shape[0] != 1 or shape[3] != 3:
            raise WorkbenchError(
                f"model input {list(shape)} is not an RGB image ([1, height, width, 3] expected)"
            )
        if spec.dtype.name not in ("uint8", "int8", "float32"):
            raise WorkbenchError(
                f"model input type {spec.dtype.name} is not uint8, int8 or float32"
            )
        return cls(width=shape[2], height=shape[1], dtype=spec.dtype.name, resample=resample)

    def key(self) -> str:
        """A stable text form, part of the embedding cache key."""
        return (
            f"{self.width}x{self.height}:{self.dtype}:{self.resample}:"
            f"{self.mean:g}/{self.std:g}:draft={int(self.draft)}"
        )


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB, with deeper images scaled to 8 bits instead of clipped.

    Pillow's own convert("RGB") clips 16-bit and 32-bit greyscale values to 255, so a
    16-bit PNG would come out almost white. These are scaled by their type's range (16-bit:
    65535, 32-bit integers holding 16-bit data likewise, larger ones by their maximum;
    floats in [0, 1] by 255, others clipped to 0..255).
    """
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        if image.mode == "F":
            peak = 1.0 if values.size and np.nanmax(values) <= 1.0 else 255.0
        elif image.mode == "I" and values.size and values.max() > 65535:
            peak = float(values.max())
        else:
            peak = 255.0 if image.mode == "I" and values.size and values.max() <= 255 else 65535.0
        grey = np.clip(np.nan_to_num(values) * (255.0 / peak), 0, 255).round().astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def decode(path: str | Path, prep: Preprocessing) -> np.ndarray:
    """Decode an image to RGB uint8 [height, width, 3] at the model's input size.

    EXIF orientation is applied, so a portrait photo is seen upright. Raises ImageError for a
    file Pillow cannot read or that is truncated.
    """
    return _decoded(path, prep)


def decode_rgb(path: str | Path) -> np.ndarray:
    """Decode an image to RGB uint8 [height, width, 3] at its own size, upright.

    What a folder played as frames gives (`workbench live --source FOLDER`); `fitted` then
    makes the same model input as `decode` does.
    """
    return _decoded(path, None)


def _decoded(path: str | Path, prep: Preprocessing | None) -> np.ndarray:
    try:
        with Image.open(path, formats=FORMATS) as image:
            width, height = image.size
            jpeg = image.format in ("JPEG", "MPO")
            # The decoder picks the largest DCT scale-down (1, 2, 4 or 8) that keeps the image
            # at or above the requested size.
            if jpeg and prep is not None and prep.draft:  # the max: EXIF may rotate it
                side = max(prep.width, prep.height)
                image.draft("RGB", (side, side))
            elif jpeg and width * height > MAX_PIXELS:  # only as far down as memory needs
                scale = 2 ** int(np.ceil(np.log2(np.sqrt(width * height / MAX_PIXELS))))
                image.draft("RGB", (width // scale, height // scale))
            if image.size[0] * image.size[1] > MAX_PIXELS:
                raise ImageError(f"{width}x{height} pixels is too large to decode")
            upright = ImageOps.exif_transpose(image)
            if prep is None:
                return np.asarray(to_rgb(upright), dtype=np.uint8)
            return fitted(upright, prep)
    except UnidentifiedImageError:
        raise ImageError("not an image format Pillow can read") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise ImageError(str(e) or type(e).__name__) from None


def fitted(image: Image.Image, prep: Preprocessing) -> np.ndarray:
    """An upright decoded image as RGB uint8 [height, width, 3] at the model's input size.

    The one resize every path takes (files, camera and video frames), so a frame saved
    without loss and classified as a file gets the same input, bit for bit.
    """
    image = to_rgb(image)
    if image.size != (prep.width, prep.height):
        image = image.resize((prep.width, prep.height), _RESAMPLE[prep.resample])
    return np.asarray(image, dtype=np.uint8)


def to_input(pixels: np.ndarray, prep: Preprocessing) -> np.ndarray:
    """RGB uint8 [h, w, 3] pixels to the input tensor's batch of one."""
    if prep.dtype == "uint8":
        batch = pixels
    elif prep.dtype == "int8":
        batch = (pixels.astype(np.int16) - 128).astype(np.int8)
    else:
        batch = (pixels.astype(np.float32) - np.float32(prep.mean)) / np.float32(prep.std)
    return batch[np.newaxis]


def load_input(path: str | Path, prep: Preprocessing) -> np.ndarray:
    """Decode and convert in one step: the model input for an image file."""
    return to_input(decode(path, prep), prep)
