"""The message edge over real DDS: a publisher process sends PointCloud2, Image, CompressedImage,
CameraInfo and TF built by our converters; this process receives them and converts them back.
The arrays must be the ones that were sent, bit for bit, and the TF buffer, fed only by the other
process's /tf and /tf_static, must answer lookups with the analytic poses."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from conftest import spin_until
from ros_processes import sensor_samples as samples
from sam4d_core.geometry.tf_buffer import ExtrapolationError, TfBuffer
from sam4d_ros.conversions.camera_info import camera_info_to_model
from sam4d_ros.conversions.image import compressed_image_to_rgb, image_to_array, image_to_rgb
from sam4d_ros.conversions.pointcloud2 import pointcloud2_to_array, pointcloud2_to_points
from sam4d_ros.tf_buffer import TfListener


@pytest.fixture
def received(rclpy_context, ros_process):
    """Start the publisher process, subscribe to everything, spin until one of each arrived."""
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2

    publisher = ros_process("sensor_publisher.py")
    node = Node("conversions_dds_test", context=rclpy_context)
    executor = SingleThreadedExecutor(context=rclpy_context)
    executor.add_node(node)
    got: dict[str, object] = {}
    topics = {
        "points": (PointCloud2, "test/points"),
        "rgb": (Image, "test/image_rgb"),
        "mono16": (Image, "test/image_mono16"),
        "png": (CompressedImage, "test/image/png"),
        "jpeg": (CompressedImage, "test/image/jpeg"),
        "info": (CameraInfo, "test/camera_info"),
    }
    for key, (msg_type, topic) in topics.items():
        node.create_subscription(msg_type, topic, lambda m, k=key: got.setdefault(k, m), 10)
    tf_buffer = TfBuffer(cache_time_s=30.0)
    listener = TfListener(node, tf_buffer)

    def ready() -> bool:
        return len(got) == len(topics) and tf_buffer.can_transform("odom", "lidar")

    try:
        ok = spin_until(executor, ready, 30.0)
        # Let a few more /tf samples arrive so lookups can interpolate inside the history.
        spin_until(executor, lambda: False, 0.5)
        assert ok, f"only received {sorted(got)}; publisher said:\n{publisher.stop()}"
        yield got, tf_buffer, listener
    finally:
        executor.shutdown()
        node.destroy_node()


def test_pointcloud2_arrives_bit_exact(received) -> None:
    got, _, _ = received
    sent = samples.cloud()
    arr = pointcloud2_to_array(got["points"])
    assert arr.shape == sent.shape
    assert arr.dtype.names == sent.dtype.names
    for name in sent.dtype.names:
        # Compare bytes, not values: NaN payloads and -0.0 must survive too.
        assert arr[name].tobytes() == np.ascontiguousarray(sent[name]).tobytes(), name
    assert got["points"].header.frame_id == "lidar"
    assert not got["points"].is_dense

    points = pointcloud2_to_points(got["points"])
    finite = np.isfinite(sent["x"]) & np.isfinite(sent["y"]) & np.isfinite(sent["z"])
    np.testing.assert_array_equal(points.valid, finite.ravel())
    xyz = np.stack([sent["x"], sent["y"], sent["z"]], axis=-1).reshape(-1, 3)
    np.testing.assert_array_equal(points.xyz[points.valid], xyz[finite.ravel()])
    np.testing.assert_array_equal(points.intensity[points.valid], sent["intensity"][finite])
    np.testing.assert_array_equal(points.ring[points.valid], sent["ring"][finite])


def test_images_arrive_bit_exact(received) -> None:
    got, _, _ = received
    np.testing.assert_array_equal(image_to_rgb(got["rgb"]), samples.rgb_image())
    np.testing.assert_array_equal(image_to_array(got["mono16"]), samples.depth_image())
    # PNG is lossless: the decoded image is the sent array.
    np.testing.assert_array_equal(compressed_image_to_rgb(got["png"]), samples.rgb_image())
    # JPEG is lossy: what arrives must decode exactly like the bytes that were encoded.
    jpeg = compressed_image_to_rgb(got["jpeg"])
    reference = cv2.imdecode(np.frombuffer(bytes(got["jpeg"].data), np.uint8), cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(jpeg, reference[:, :, ::-1])
    assert np.abs(jpeg.astype(int) - samples.smooth_image()).mean() < 4  # it is that image


def test_camera_info_arrives(received) -> None:
    got, _, _ = received
    model = camera_info_to_model(got["info"])
    np.testing.assert_array_equal(model.K, samples.CAMERA_K)
    np.testing.assert_array_equal(model.D, samples.CAMERA_D)
    assert model.distortion_model == "plumb_bob" and model.size == (64, 48)


def test_tf_buffer_fed_by_another_process(received) -> None:
    _, tf_buffer, listener = received
    assert listener.dropped == 0
    first, last = tf_buffer.time_range("odom", "base_link")
    # /tf is volatile: samples sent before this process subscribed are gone.
    assert (
        first >= samples.BASE_STAMP_NS
        and (first - samples.BASE_STAMP_NS) % samples.TF_PERIOD_NS == 0
    )
    assert last > first + 2 * samples.TF_PERIOD_NS
    # Between two samples: interpolation (linear translation, slerp yaw) is exact for this motion.
    stamp = first + samples.TF_PERIOD_NS + samples.TF_PERIOD_NS // 3
    expected = samples.moving_pose(stamp) @ samples.lidar_mount()
    np.testing.assert_allclose(tf_buffer.lookup("odom", "lidar", stamp), expected, atol=1e-9)
    # Static transforms hold at any time, also far outside the /tf history.
    np.testing.assert_allclose(
        tf_buffer.lookup("base_link", "lidar", 1), samples.lidar_mount(), atol=1e-12
    )
    np.testing.assert_allclose(
        tf_buffer.lookup("lidar", "odom", stamp), np.linalg.inv(expected), atol=1e-9
    )
    with pytest.raises(ExtrapolationError, match="base_link"):
        tf_buffer.lookup("odom", "lidar", last + 10 * 1_000_000_000)
