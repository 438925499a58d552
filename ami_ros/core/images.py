"""Camera images as the model sees them: one decode and one resize for every path
(the encoder node, the planner node's goal images, the bag loader, the bench).

An image is given as the fields of a ``sensor_msgs/Image`` (encoding, height,
width, step, data); an rclpy message and a rosbags message both carry them, so
:func:`model_frame` takes either.
"""
from __future__ import annotations

import numpy as np

#: supported encodings and their channels
ENCODING_CHANNELS = {"rgb8": 3, "bgr8": 3, "mono8": 1}


def image_problem(encoding: str, height: int, width: int, step: int, nbytes: int) -> str | None:
    """Why an image with these fields cannot be decoded, or None."""
    enc = str(encoding).lower()
    if enc not in ENCODING_CHANNELS:
        return f"unsupported encoding {encoding!r}; supported: {sorted(ENCODING_CHANNELS)}"
    h, w, step = int(height), int(width), int(step)
    c = ENCODING_CHANNELS[enc]
    if h <= 0 or w <= 0 or step < w * c or nbytes < step * h:
        return (f"bad size: {w}x{h} {enc}, step {step}, {nbytes} data bytes "
                f"(need step >= {w * c} and {step * h} bytes)")
    return None


def decode_image(encoding: str, height: int, width: int, step: int, data) -> np.ndarray:
    """Raw image -> (H, W, 3) uint8 RGB; ValueError (with the reason) on anything else.

    ``data``: bytes, array.array or a uint8 numpy array. rgb8 comes back without a copy: a
    view of ``data`` (strided when ``step`` has row padding); copy it before changing it in
    place. bgr8 is reordered and mono8 repeated into new arrays.
    """
    buf = np.frombuffer(data, dtype=np.uint8)
    reason = image_problem(encoding, height, width, step, buf.size)
    if reason:
        raise ValueError(reason)
    enc = str(encoding).lower()
    h, w, step = int(height), int(width), int(step)
    c = ENCODING_CHANNELS[enc]
    img = buf[: h * step].reshape(h, step)[:, : w * c].reshape(h, w, c)
    if enc == "bgr8":
        return img[..., ::-1].copy()
    if enc == "mono8":
        return np.repeat(img, 3, axis=2)
    return img


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


def model_frame(image, size) -> np.ndarray:
    """An image message (anything with encoding, height, width, step and data) as the model
    sees it: RGB uint8 resized to ``size`` (int or (width, height); None keeps its size).
    ValueError (with the reason) on an unsupported encoding, an empty image or short data."""
    img = decode_image(image.encoding, image.height, image.width, image.step, image.data)
    return img if size is None else resize_image(img, size)
