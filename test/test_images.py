"""core.images: one decode and resize of camera images, and the same frame through the bag
loader (training data) and through the encoder node's conversion (live camera)."""
from __future__ import annotations

import numpy as np
import pytest

from ami_ros.core.images import decode_compressed, decode_image, model_frame, resize_image


def _raw(img: np.ndarray, pad: int = 0) -> tuple[int, bytes]:
    """(step, data) of an (H, W, C) uint8 image with ``pad`` bytes of padding per row."""
    h, w, c = img.shape
    rows = np.zeros((h, w * c + pad), np.uint8)
    rows[:, : w * c] = img.reshape(h, w * c)
    return w * c + pad, rows.tobytes()


RNG = np.random.default_rng(3)
RGB = RNG.integers(0, 256, (6, 10, 3), dtype=np.uint8)


def test_rgb8_is_a_view_without_the_row_padding():
    step, data = _raw(RGB, pad=4)
    buf = bytearray(data)
    img = decode_image("rgb8", 6, 10, step, buf)
    np.testing.assert_array_equal(img, RGB)
    buf[0] ^= 0xFF                       # a view of the message's data, not a copy
    assert img[0, 0, 0] == RGB[0, 0, 0] ^ 0xFF


def test_bgr8_and_mono8_come_back_rgb():
    step, data = _raw(RGB[..., ::-1].copy(), pad=2)
    np.testing.assert_array_equal(decode_image("bgr8", 6, 10, step, data), RGB)
    mono = RGB[..., :1].copy()
    step, data = _raw(mono, pad=3)
    out = decode_image("mono8", 6, 10, step, data)
    assert out.shape == (6, 10, 3) and (out == mono).all()


@pytest.mark.parametrize("fields, reason", [
    (("16UC1", 6, 10, 20, 120), "unsupported encoding '16UC1'"),
    (("bayer_rggb8", 6, 10, 10, 60), "unsupported encoding 'bayer_rggb8'"),
    (("rgb8", 6, 10, 30, 179), "bad size"),          # one byte short
    (("rgb8", 6, 10, 29, 180), "bad size"),          # step shorter than a row
    (("rgb8", 0, 10, 30, 0), "bad size"),            # empty
])
def test_refusals_name_the_reason(fields, reason):
    enc, h, w, step, n = fields
    with pytest.raises(ValueError, match=reason):
        decode_image(enc, h, w, step, bytes(n))


def test_rgba8_and_bgra8_drop_the_alpha():
    alpha = RNG.integers(0, 256, (6, 10, 1), dtype=np.uint8)
    step, data = _raw(np.concatenate([RGB, alpha], axis=2), pad=4)
    np.testing.assert_array_equal(decode_image("rgba8", 6, 10, step, data), RGB)
    step, data = _raw(np.concatenate([RGB[..., ::-1], alpha], axis=2), pad=4)
    np.testing.assert_array_equal(decode_image("BGRA8", 6, 10, step, data), RGB)


@pytest.mark.parametrize("bigendian", [False, True])
def test_mono16_keeps_the_high_byte_in_either_byte_order(bigendian):
    words = RNG.integers(0, 65536, (6, 10), dtype=np.uint16)
    raw = words.astype(">u2" if bigendian else "<u2").view(np.uint8).reshape(6, 20, 1)
    step, data = _raw(raw, pad=2)
    out = decode_image("mono16", 6, 10, step, data, is_bigendian=bigendian)
    assert out.shape == (6, 10, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, np.repeat((words >> 8).astype(np.uint8)[..., None], 3, axis=2))


@pytest.mark.parametrize("encoding, order", [("yuv422", "UYVY"), ("uyvy", "UYVY"),
                                             ("yuv422_yuy2", "YUY2"), ("yuyv", "YUY2")])
def test_yuv422_in_both_byte_orders(encoding, order):
    cv2 = pytest.importorskip("cv2")
    pairs = np.repeat(RNG.integers(30, 220, (6, 5, 3), dtype=np.uint8), 2, axis=1)  # one colour per pixel pair
    yuv = cv2.cvtColor(pairs, getattr(cv2, f"COLOR_RGB2YUV_{order}"))
    step, data = _raw(yuv, pad=6)
    out = decode_image(encoding, 6, 10, step, data)
    assert out.shape == (6, 10, 3) and np.abs(out.astype(int) - pairs).max() <= 3
    other = {"UYVY": "yuyv", "YUY2": "uyvy"}[order]                 # the other byte order reads differently
    assert np.abs(decode_image(other, 6, 10, step, data).astype(int) - pairs).max() > 20


def test_yuv422_refuses_an_odd_width():
    with pytest.raises(ValueError, match="odd"):
        decode_image("yuv422_yuy2", 2, 3, 6, bytes(12))


@pytest.mark.parametrize("ext", [".jpg", ".png"])
def test_compressed_jpeg_and_png(ext):
    cv2 = pytest.importorskip("cv2")
    halves = np.zeros((16, 32, 3), np.uint8)                        # two flat 16x16 blocks: JPEG keeps them
    halves[:, :16], halves[:, 16:] = (200, 40, 90), (20, 180, 60)
    ok, enc = cv2.imencode(ext, np.ascontiguousarray(halves[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 95])
    out = decode_compressed("rgb8; jpeg compressed bgr8" if ext == ".jpg" else "png", enc.tobytes())
    assert out.shape == (16, 32, 3) and out.dtype == np.uint8
    err = np.abs(out.astype(int) - halves)
    if ext == ".png":
        assert err.max() == 0
    else:                                                           # lossy: ringing at the edge only
        assert np.median(err) <= 2 and np.abs(out[:, :12].mean((0, 1)) - (200, 40, 90)).max() < 4
    if ext == ".png":
        grey = cv2.imencode(".png", RGB[..., 0])[1]                 # a grey PNG: three equal channels
        np.testing.assert_array_equal(decode_compressed("png", grey.tobytes()), np.repeat(RGB[..., :1], 3, axis=2))


@pytest.mark.parametrize("fmt, data, reason", [
    ("16UC1; compressedDepth png", b"\x00" * 12 + b"\x89PNG\r\n\x1a\n", "compressedDepth"),
    ("h264", b"\x00\x00\x00\x01gd", "neither JPEG nor PNG"),
    ("jpeg", b"\xff\xd8\xff\xe0" + bytes(40), "could not be decoded"),  # a JPEG header, then nothing
])
def test_compressed_refusals_name_the_reason(fmt, data, reason):
    pytest.importorskip("cv2")
    with pytest.raises(ValueError, match=reason):
        decode_compressed(fmt, data)


def test_resize_square_or_width_height_and_no_copy_at_size():
    assert resize_image(RGB, 4).shape == (4, 4, 3)
    assert resize_image(RGB, (5, 3)).shape == (3, 5, 3)
    assert resize_image(RGB, (10, 6)) is RGB
    flat = np.full((8, 8, 3), 9, np.uint8)
    assert (resize_image(flat, 4) == 9).all()        # area averaging keeps a flat image flat


def test_bag_and_encoder_node_give_the_same_frame(tmp_path):
    """One bgr8 camera message with row padding, recorded into a bag and loaded for training,
    and received by the encoder node: the same (size, size, 3) frame and the same input tensor."""
    pytest.importorskip("rosbags")
    torch = pytest.importorskip("torch")
    sensor_msgs = pytest.importorskip("sensor_msgs.msg")
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    from ami_ros.core.world_model import image_to_tensor
    from ami_ros.data import load_episode

    size, names = 8, ["j1", "j2"]
    bgr = RNG.integers(0, 256, (12, 20, 3), dtype=np.uint8)   # not square: resized, not cropped
    step, data = _raw(bgr, pad=4)

    # the live message, as the camera driver publishes it
    live = sensor_msgs.Image(height=12, width=20, encoding="bgr8", is_bigendian=0, step=step)
    live.data = data
    node_frame = model_frame(live, size)               # what EncoderNode._on_image does with it

    # the same message in a bag, with the joint states and commands an episode needs
    ts = get_typestore(Stores.ROS2_JAZZY)
    T_, Hd, Img, JS, JT, JTP, Dur = (ts.types[n] for n in (
        "builtin_interfaces/msg/Time", "std_msgs/msg/Header", "sensor_msgs/msg/Image", "sensor_msgs/msg/JointState",
        "trajectory_msgs/msg/JointTrajectory", "trajectory_msgs/msg/JointTrajectoryPoint",
        "builtin_interfaces/msg/Duration"))
    base = 1_700_000_000 * 10**9

    def hdr(ns):
        return Hd(stamp=T_(sec=ns // 10**9, nanosec=ns % 10**9), frame_id="camera")

    with Writer(tmp_path / "ep", version=9, storage_plugin=StoragePlugin.MCAP) as wr:
        c_img = wr.add_connection("/camera/image_raw", "sensor_msgs/msg/Image", typestore=ts)
        c_js = wr.add_connection("/joint_states", "sensor_msgs/msg/JointState", typestore=ts)
        c_cmd = wr.add_connection("/arm_controller/joint_trajectory", "trajectory_msgs/msg/JointTrajectory",
                                  typestore=ts)
        img = Img(header=hdr(base), height=12, width=20, encoding="bgr8", is_bigendian=0, step=step,
                  data=np.frombuffer(data, np.uint8))
        wr.write(c_img, base, ts.serialize_cdr(img, "sensor_msgs/msg/Image"))
        for k in range(6):
            ns = base + k * 50_000_000
            js = JS(header=hdr(ns), name=names, position=np.zeros(2), velocity=np.zeros(2), effort=np.zeros(0))
            wr.write(c_js, ns, ts.serialize_cdr(js, "sensor_msgs/msg/JointState"))
        pt = JTP(positions=np.zeros(2), velocities=np.zeros(0), accelerations=np.zeros(0), effort=np.zeros(0),
                 time_from_start=Dur(sec=0, nanosec=100_000_000))
        cmd = JT(header=hdr(0), joint_names=names, points=[pt])
        wr.write(c_cmd, base, ts.serialize_cdr(cmd, "trajectory_msgs/msg/JointTrajectory"))
    ep = load_episode(tmp_path / "ep", joint_names=names, image_size=size)

    assert node_frame.shape == (size, size, 3) and node_frame.dtype == np.uint8
    for frame in ep.frames:                            # every tick holds that one frame
        np.testing.assert_array_equal(frame, node_frame)
    np.testing.assert_array_equal(node_frame, resize_image(bgr[..., ::-1], size))
    assert torch.equal(image_to_tensor(ep.frames[:1]), image_to_tensor(node_frame[None]))
