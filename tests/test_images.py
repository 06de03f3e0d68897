from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from workbench.data import images
from workbench.data.images import ImageError, Preprocessing, decode, load_input, to_input

PREP = Preprocessing(width=16, height=8, dtype="uint8", draft=False)


def test_decode_resizes_and_converts_modes(tmp_path: Path) -> None:
    for mode, color in [("RGBA", (10, 20, 30, 40)), ("L", 77), ("P", 3), ("CMYK", (0, 0, 0, 0))]:
        path = tmp_path / f"{mode}.{'jpg' if mode == 'CMYK' else 'png'}"
        Image.new(mode, (40, 30), color).save(path)
        pixels = decode(path, PREP)
        assert pixels.shape == (8, 16, 3) and pixels.dtype == np.uint8


def test_decode_applies_exif_orientation(tmp_path: Path) -> None:
    # A landscape array stored with "rotate 90" orientation is a portrait photo.
    image = Image.new("RGB", (40, 20), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 20, 20))  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW when displayed
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif, quality=95)
    prep = Preprocessing(width=20, height=40, dtype="uint8", draft=False)
    pixels = decode(path, prep).astype(int)
    # Displayed upright, the white half is on top.
    assert pixels[:15].mean() > 200 and pixels[25:].mean() < 50


@pytest.mark.parametrize("content", [b"", b"GIF89a garbage", b"\xff\xd8\xff\xe0 truncated jpeg"])
def test_unreadable_files_raise_image_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)
    with pytest.raises(ImageError):
        decode(path, PREP)


def test_truncated_jpeg_raises_image_error(tmp_path: Path) -> None:
    path = tmp_path / "photo.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:400])
    with pytest.raises(ImageError):
        decode(path, PREP)


def test_to_input_per_type() -> None:
    pixels = np.array([[[0, 128, 255]]], np.uint8)
    assert to_input(pixels, PREP).tolist() == [[[[0, 128, 255]]]]
    int8 = to_input(pixels, Preprocessing(1, 1, "int8"))
    assert int8.dtype == np.int8 and int8.tolist() == [[[[-128, 0, 127]]]]
    f = to_input(pixels, Preprocessing(1, 1, "float32"))
    assert f.dtype == np.float32
    np.testing.assert_allclose(f, [[[[-1.0, 0.5 / 127.5, 1.0]]]], atol=1e-6)


def test_jpeg_draft_decodes_close_to_full_decode(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    smooth = np.kron(rng.integers(0, 255, (8, 8, 3)), np.ones((64, 64, 1))).astype(np.uint8)
    path = tmp_path / "big.jpg"
    Image.fromarray(smooth).save(path, quality=95)
    fast = load_input(path, Preprocessing(64, 64, "uint8", draft=True)).astype(int)
    full = load_input(path, Preprocessing(64, 64, "uint8", draft=False)).astype(int)
    assert fast.shape == full.shape == (1, 64, 64, 3)
    assert np.abs(fast - full).mean() < 6


def test_only_a_jpeg_above_the_pixel_limit_is_decoded_scaled_down(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(2)
    smooth = np.kron(rng.integers(0, 255, (4, 4, 3)), np.ones((50, 50, 1))).astype(np.uint8)
    Image.fromarray(smooth).save(tmp_path / "big.jpg", quality=95)
    Image.fromarray(smooth).save(tmp_path / "big.png")
    prep = Preprocessing(64, 64, "uint8")
    full = load_input(tmp_path / "big.jpg", prep).astype(int)
    monkeypatch.setattr(images, "MAX_PIXELS", 12_000)  # 200x200 is 40,000: half size fits
    scaled = load_input(tmp_path / "big.jpg", prep).astype(int)
    assert scaled.shape == full.shape and 0 < np.abs(scaled - full).mean() < 6
    with pytest.raises(ImageError, match="too large"):
        load_input(tmp_path / "big.png", prep)
    monkeypatch.setattr(images, "MAX_PIXELS", 600)  # an eighth of each side is 625 pixels
    with pytest.raises(ImageError, match="too large"):
        load_input(tmp_path / "big.jpg", prep)
