"""The PNG writer: valid chunks and CRCs, pixels that decode back, deterministic bytes."""

import struct

import numpy as np
import pytest
from reporthelpers import decode_png

from musicgen.report.png import encode_png, write_png


@pytest.mark.parametrize("shape", [(5, 7, 3), (4, 9), (1, 1, 3)])
def test_png_round_trip(shape):
    image = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    data = encode_png(image)
    np.testing.assert_array_equal(decode_png(data), image)
    assert encode_png(image.copy()) == data  # same pixels, same bytes


def test_png_header_fields():
    data = encode_png(np.zeros((3, 11, 3), np.uint8))
    assert data[12:16] == b"IHDR"
    assert struct.unpack(">II", data[16:24]) == (11, 3)  # width, height
    assert data[24:26] == bytes([8, 2])  # 8 bits, RGB


def test_write_png_writes_the_encoded_bytes(tmp_path):
    image = np.arange(24, dtype=np.uint8).reshape(2, 4, 3)
    path = write_png(tmp_path / "sub" / "a.png", image)
    assert path.read_bytes() == encode_png(image)
    assert [p.name for p in path.parent.iterdir()] == ["a.png"]  # no temporary file left


@pytest.mark.parametrize(
    "image, match",
    [
        (np.zeros((2, 2, 3), np.float32), "uint8"),
        (np.zeros((2, 2, 4), np.uint8), r"\(H, W\)"),
        (np.zeros((0, 2), np.uint8), "empty"),
    ],
)
def test_png_rejects_bad_images(image, match):
    with pytest.raises(ValueError, match=match):
        encode_png(image)
