"""Camera images as the model sees them: one decode and one resize for every path
(the encoder node, the planner node's goal images, the bag loader, the bench).

An image is a ``sensor_msgs/Image`` (encoding, height, width, step, data, is_bigendian)
or a ``sensor_msgs/CompressedImage`` (format, data: JPEG or PNG, as image_transport's
``compressed`` plugin publishes it); an rclpy message and a rosbags message both carry
these fields, so :func:`model_frame` takes any of them.

Raw encodings (names as in sensor_msgs/image_encodings.hpp, any case): rgb8, bgr8,
rgba8, bgra8 (alpha dropped), mono8, mono16 (the high byte: 0..65535 -> 0..255) and
YUV 4:2:2, both byte orders: ``yuv422`` / ``uyvy`` (U Y0 V Y1) and ``yuv422_yuy2`` /
``yuyv`` (Y0 U Y1 V), converted by OpenCV. Anything else is refused naming the encoding.
"""
from __future__ import annotations

import numpy as np

#: supported raw encodings and their bytes per pixel
ENCODING_BYTES = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1, "mono16": 2,
                  "yuv422": 2, "uyvy": 2, "yuv422_yuy2": 2, "yuyv": 2}

#: the YUV 4:2:2 encodings and the byte order OpenCV names them by
_YUV_ORDER = {"yuv422": "UYVY", "uyvy": "UYVY", "yuv422_yuy2": "YUY2", "yuyv": "YUY2"}

#: the first bytes of each compressed format cv2.imdecode is asked to read
_MAGIC = {"jpeg": b"\xff\xd8\xff", "png": b"\x89PNG\r\n\x1a\n"}


def image_problem(encoding: str, height: int, width: int, step: int, nbytes: int) -> str | None:
    """Why a raw image with these fields cannot be decoded, or None."""
    enc = str(encoding).lower()
    if enc not in ENCODING_BYTES:
        return f"unsupported encoding {encoding!r}; supported: {sorted(ENCODING_BYTES)}"
    h, w, step = int(height), int(width), int(step)
    b = ENCODING_BYTES[enc]
    if h <= 0 or w <= 0 or step < w * b or nbytes < step * h:
        return (f"bad size: {w}x{h} {enc}, step {step}, {nbytes} data bytes "
                f"(need step >= {w * b} and {step * h} bytes)")
    if enc in _YUV_ORDER and w % 2:
        return f"bad size: {enc} packs pixels in pairs, but the width is odd ({w})"
    return None


def decode_image(encoding: str, height: int, width: int, step: int, data,
                 is_bigendian: bool = False) -> np.ndarray:
    """Raw image -> (H, W, 3) uint8 RGB; ValueError (with the reason) on anything else.

    ``data``: bytes, array.array or a uint8 numpy array. rgb8 comes back without a copy: a
    view of ``data`` (strided when ``step`` has row padding); copy it before changing it in
    place. Every other encoding is converted into a new array. ``is_bigendian`` matters
    for mono16 only.
    """
    buf = np.frombuffer(data, dtype=np.uint8)
    reason = image_problem(encoding, height, width, step, buf.size)
    if reason:
        raise ValueError(reason)
    enc = str(encoding).lower()
    h, w, step = int(height), int(width), int(step)
    b = ENCODING_BYTES[enc]
    rows = buf[: h * step].reshape(h, step)[:, : w * b]   # drops the row padding
    if enc in _YUV_ORDER:
        import cv2

        code = getattr(cv2, f"COLOR_YUV2RGB_{_YUV_ORDER[enc]}")
        return cv2.cvtColor(np.ascontiguousarray(rows).reshape(h, w, 2), code)
    if enc == "mono16":
        words = np.ascontiguousarray(rows).view(">u2" if is_bigendian else "<u2").reshape(h, w, 1)
        return np.repeat((words >> 8).astype(np.uint8), 3, axis=2)
    img = rows.reshape(h, w, b)
    if enc == "rgb8":
        return img
    if enc == "mono8":
        return np.repeat(img, 3, axis=2)
    if enc == "rgba8":
        return np.ascontiguousarray(img[..., :3])
    return img[..., 2::-1].copy()                        # bgr8, bgra8: B, G, R(, A) -> R, G, B


def compressed_problem(fmt: str, data) -> str | None:
    """Why a CompressedImage with this format and data cannot be decoded, or None.

    The codec is told by the data's first bytes (JPEG or PNG); ``fmt`` only serves to
    refuse image_transport's compressedDepth (a depth image, not a camera frame)."""
    if "compresseddepth" in str(fmt).lower().replace(" ", ""):
        return f"unsupported compressed format {fmt!r}: a compressedDepth (depth) image, not a camera frame"
    head = bytes(np.frombuffer(data, dtype=np.uint8)[:8])
    if not any(head.startswith(m) for m in _MAGIC.values()):
        return (f"unsupported compressed format {fmt!r}: the data is neither JPEG nor PNG "
                f"(first bytes {head.hex()}); supported: {sorted(_MAGIC)}")
    return None


def decode_compressed(fmt: str, data) -> np.ndarray:
    """CompressedImage (JPEG or PNG) -> (H, W, 3) uint8 RGB, decoded with cv2.imdecode;
    ValueError (with the reason) on anything else. Grey images come back as three equal
    channels, 16-bit PNGs as their high byte."""
    reason = compressed_problem(fmt, data)
    if reason:
        raise ValueError(reason)
    import cv2

    bgr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"compressed image ({fmt!r}, {len(data)} bytes) could not be decoded (corrupt data?)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def is_compressed(image) -> bool:
    """Whether a message is a CompressedImage (it has a format and no encoding)."""
    return hasattr(image, "format") and not hasattr(image, "encoding")


def frame_problem(image) -> str | None:
    """Why an image message (raw or compressed) cannot be decoded, or None, without decoding
    it (a compressed image's data can still turn out corrupt when decoded)."""
    if is_compressed(image):
        return compressed_problem(image.format, image.data)
    return image_problem(image.encoding, image.height, image.width, image.step, len(image.data))


def resize_image(img: np.ndarray, size) -> np.ndarray:
    """(H, W, C) uint8 -> size by area averaging; ``size`` an int (square) or (width, height).
    No copy when the image has that size already.

    The model sees square frames; a non-square camera image is resized, not cropped,
    exactly as the data it was trained on was.
    """
    w, h = (size, size) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))
    if img.shape[0] == h and img.shape[1] == w:
        return img
    import cv2

    out = cv2.resize(np.ascontiguousarray(img), (w, h), interpolation=cv2.INTER_AREA)
    return out[..., None] if out.ndim == 2 else out


def decode_frame(image) -> np.ndarray:
    """An image message, raw or compressed, as (H, W, 3) uint8 RGB at its own size."""
    if is_compressed(image):
        return decode_compressed(image.format, image.data)
    return decode_image(image.encoding, image.height, image.width, image.step, image.data,
                        bool(getattr(image, "is_bigendian", 0)))


def model_frame(image, size) -> np.ndarray:
    """An image message (a sensor_msgs Image or CompressedImage) as the model sees it: RGB
    uint8 resized to ``size`` (int or (width, height); None keeps its size). ValueError
    (with the reason) on an unsupported encoding or format, an empty image or short or
    corrupt data."""
    img = decode_frame(image)
    return img if size is None else resize_image(img, size)
