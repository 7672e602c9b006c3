# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""Image/instruction conversions at the boundary: malformed messages are rejected with every reason.

Needs the message classes (sensor_msgs), not DDS.
"""

from __future__ import annotations

import io

import numpy as np
import pytest

pytest.importorskip("sensor_msgs.msg")

from sensor_msgs.msg import CompressedImage, Image  # noqa: E402

from twinbrain_ros.core.embodiment import CameraSpec  # noqa: E402
from twinbrain_ros.core.validation import ValidationError  # noqa: E402
from twinbrain_ros.ros.conversions import (  # noqa: E402
    compressed_image_from_msg,
    compressed_image_to_msg,
    image_from_msg,
    image_to_msg,
    instruction_check,
    time_to_sec,
)

CAM = CameraSpec(name="front", topic="camera/front/image_raw", width=8, height=6, encoding="rgb8")


def frame(h=6, w=8):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def problems(fn, *args):
    with pytest.raises(ValidationError) as e:
        fn(*args)
    return e.value.problems


@pytest.mark.parametrize("enc", ["rgb8", "bgr8", "mono8"])
def test_roundtrip_encodings(enc):
    img = frame()
    msg = image_to_msg(img, 12.5, enc, frame_id="front")
    assert msg.encoding == enc and msg.header.frame_id == "front" and time_to_sec(msg.header.stamp) == 12.5
    assert msg.step == 8 * (1 if enc == "mono8" else 3)
    out = image_from_msg(msg, CameraSpec("front", "t", 8, 6, enc))
    assert out.shape == (6, 8, 3) and out.dtype == np.uint8
    if enc == "mono8":
        grey = np.rint(img.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)).astype(np.uint8)
        np.testing.assert_array_equal(out, np.repeat(grey[..., None], 3, axis=2))
    else:
        np.testing.assert_array_equal(out, img)


def test_rgb8_is_a_read_only_view():
    msg = image_to_msg(frame(), 0.0)
    out = image_from_msg(msg)
    assert not out.flags.writeable


def test_step_padding_honoured():
    img = frame()
    padded = np.zeros((6, 8 * 3 + 5), np.uint8)
    padded[:, : 8 * 3] = img.reshape(6, -1)
    padded[:, 8 * 3 :] = 255  # padding bytes must not leak into the image
    msg = Image(height=6, width=8, encoding="bgr8", step=8 * 3 + 5, data=padded.tobytes())
    out = image_from_msg(msg)
    np.testing.assert_array_equal(out, img[..., ::-1])


def test_wrong_encoding_rejected():
    msg = image_to_msg(frame(), 0.0)
    msg.encoding = "16UC1"
    assert any("unsupported encoding '16UC1'" in p for p in problems(image_from_msg, msg, CAM))
    msg.encoding = "bgr8"  # supported, but not what the contract says for this camera
    assert problems(image_from_msg, msg, CAM) == [
        "encoding 'bgr8' differs from the contract's 'rgb8' for camera 'front'"
    ]


def test_size_mismatch_vs_contract():
    msg = image_to_msg(frame(h=4, w=8), 0.0)
    assert problems(image_from_msg, msg, CAM) == [
        "image is 8x4 but the contract expects 8x6 for camera 'front'"
    ]


def test_truncated_and_oversized_data():
    msg = image_to_msg(frame(), 0.0)
    msg.data = bytes(msg.data)[:-10]
    expected = "truncated: 134 bytes, expected step*height = 24*6 = 144"
    assert any(expected in p for p in problems(image_from_msg, msg))
    msg.data = bytes(150)
    assert any("more than step*height" in p for p in problems(image_from_msg, msg))


def test_all_problems_listed_at_once():
    msg = Image(height=6, width=8, encoding="rgb8", step=10, data=bytes(10))
    ps = problems(image_from_msg, msg, CameraSpec("front", "t", 640, 480, "rgb8"))
    assert len(ps) == 3
    assert any("640x480" in p for p in ps) and any("step 10 is smaller" in p for p in ps)
    assert any("truncated" in p for p in ps)
    empty = Image(height=0, width=0, encoding="rgb8", step=0)
    assert any("empty" in p for p in problems(image_from_msg, empty))


def test_image_to_msg_rejects_bad_arrays():
    assert any("uint8" in p for p in problems(image_to_msg, np.zeros((2, 2, 3), np.float32), 0.0))
    assert any("(H, W, 3)" in p for p in problems(image_to_msg, np.zeros((2, 2), np.uint8), 0.0, "rgb8"))
    assert any("unsupported encoding" in p for p in problems(image_to_msg, frame(), 0.0, "yuv422"))
    assert image_to_msg(np.zeros((2, 3), np.uint8), 0.0, "mono8").step == 3


@pytest.mark.parametrize("fmt", ["jpeg", "png"])
def test_compressed_roundtrip(fmt):
    # smooth content with distinct channels: JPEG keeps it close, and a channel swap would show
    y, x = np.mgrid[0:48, 0:64]
    img = np.stack([x * 4, y * 5, np.full_like(x, 200)], axis=-1).astype(np.uint8)
    msg = compressed_image_to_msg(img, 3.0, fmt)
    assert fmt in msg.format
    out = compressed_image_from_msg(msg, CameraSpec("front", "t", 64, 48))
    assert out.shape == (48, 64, 3) and out.dtype == np.uint8
    if fmt == "png":
        np.testing.assert_array_equal(out, img)
    else:
        assert np.abs(out.astype(int) - img.astype(int)).mean() < 6


def test_compressed_empty_format_sniffs_codec():
    msg = compressed_image_to_msg(frame(), 0.0, "png")
    msg.format = ""
    assert compressed_image_from_msg(msg).shape == (6, 8, 3)


def test_compressed_malformed():
    good = compressed_image_to_msg(frame(48, 64), 0.0, "jpeg")
    # size vs contract (checked from the header)
    assert problems(compressed_image_from_msg, good, CAM) == [
        "image is 64x48 but the contract expects 8x6 for camera 'front'"
    ]
    # unsupported declared format
    bad = CompressedImage(format="tiff", data=bytes(good.data))
    assert any("unsupported format 'tiff'" in p for p in problems(compressed_image_from_msg, bad))
    # garbage bytes
    junk = CompressedImage(format="jpeg", data=b"\x00\x01not an image at all")
    assert any("not a decodable" in p for p in problems(compressed_image_from_msg, junk))
    # empty
    assert problems(compressed_image_from_msg, CompressedImage(format="jpeg")) == ["data is empty"]
    # declared codec differs from the data
    png = compressed_image_to_msg(frame(), 0.0, "png")
    png.format = "rgb8; jpeg compressed bgr8"
    assert problems(compressed_image_from_msg, png) == ["format says 'jpeg' but the data is png"]
    # truncated payload: the header parses, the pixels do not
    trunc = CompressedImage(format="jpeg", data=bytes(good.data)[: len(good.data) // 3])
    assert any("could not be decoded" in p or "not a decodable" in p
               for p in problems(compressed_image_from_msg, trunc))
    # another image format
    from PIL import Image as PILImage

    buf = io.BytesIO()
    PILImage.fromarray(frame()).save(buf, format="BMP")
    bmp = CompressedImage(format="", data=buf.getvalue())
    assert any("not JPEG or PNG" in p for p in problems(compressed_image_from_msg, bmp))


def test_instruction_check():
    assert instruction_check("  pick up the cube \n", 100) == "pick up the cube"
    assert problems(instruction_check, "", 10) == ["instruction is empty"]
    assert problems(instruction_check, "   \t", 10) == ["instruction is empty"]
    assert problems(instruction_check, "x" * 11, 10) == [
        "instruction has 11 characters, more than the maximum 10"
    ]
    assert any("control characters ['U+0000']" in p for p in problems(instruction_check, "a\x00b", 10))
    assert problems(instruction_check, None, 10) == ["instruction must be a string, got NoneType"]
    assert instruction_check("line one\nline two", 100) == "line one\nline two"
