"""Synced messages + TF -> sam4d_core Frame (sam4d_ros.frame_builder), with real sensor_msgs:
NaN points and the index map, intrinsics and undistortion, ego pose and extrinsics from TF (with
motion compensation and parameter fallbacks), and errors that name the stream, topic or frames."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from sensor_msgs.msg import CameraInfo, Image

from sam4d_core.codecs.transform import invert_transform, tq_to_matrix
from sam4d_core.geometry.tf_buffer import TfBuffer
from sam4d_ros.conversions.image import rgb_to_compressed_msg, rgb_to_image_msg
from sam4d_ros.conversions.pointcloud2 import array_to_pointcloud2
from sam4d_ros.conversions.stamps import make_header
from sam4d_ros.frame_builder import (
    BadMessageError,
    CameraSource,
    FrameBuilder,
    FrameBuilderConfig,
    MissingTransformError,
    cloud_to_points,
)
from sam4d_ros.sync import SweepSynchronizer, SyncConfig

NS = 1_000_000_000
T0 = 1_700_000_000 * NS
W, H = 64, 48
K = np.array([[50.0, 0.0, 31.5], [0.0, 50.0, 23.5], [0.0, 0.0, 1.0]])
# Camera optical <- LiDAR: optical z forward = LiDAR x, optical x right = -LiDAR y, y down = -z.
CAM_FROM_LIDAR = np.array(
    [[0.0, -1.0, 0.0, 0.1], [0.0, 0.0, -1.0, -0.2], [1.0, 0.0, 0.0, 0.3], [0.0, 0.0, 0.0, 1.0]]
)


def yaw_pose(x: float, yaw: float = 0.0) -> np.ndarray:
    return tq_to_matrix([x, 0.5 * x, 0.0], [0.0, 0.0, math.sin(yaw / 2), math.cos(yaw / 2)])


def make_tf(odom_samples=((T0 - NS, 0.0), (T0 + NS, 20.0))) -> TfBuffer:
    """odom -> base_link moving along x (10 m/s), base_link -> lidar and lidar -> cameras static."""
    tf = TfBuffer()
    for stamp, x in odom_samples:
        tf.set_transform("odom", "base_link", stamp, yaw_pose(x))
    tf.set_transform("base_link", "lidar", 0, tq_to_matrix([1.0, 0.0, 1.8], [0, 0, 0, 1]), True)
    tf.set_transform("lidar", "cam_optical", 0, invert_transform(CAM_FROM_LIDAR), static=True)
    return tf


def cloud_msg(organized: bool = True, intensity: bool = True, stamp_ns: int = T0):
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    if intensity:
        fields.append(("intensity", "<f4"))
    fields.append(("ring", "<u2"))
    arr = np.zeros((2, 3) if organized else (6,), dtype=np.dtype(fields))
    flat = arr.reshape(-1)
    flat["x"] = [1, 2, np.nan, 4, 5, 6]
    flat["y"] = [0, 1, 2, np.inf, 4, 5]
    flat["z"] = [0.5, 0.5, 0.5, 0.5, 0.5, 0.5]
    if intensity:
        flat["intensity"] = [10, 20, 30, 40, np.nan, 60]
    flat["ring"] = np.arange(6)
    return array_to_pointcloud2(arr, make_header(stamp_ns, "lidar"))


def camera_info(distorted: bool = False, r=None) -> CameraInfo:
    info = CameraInfo()
    info.header = make_header(T0, "cam_optical")
    info.width, info.height = W, H
    info.distortion_model = "plumb_bob"
    info.d = [-0.3, 0.1, 0.001, -0.002, 0.0] if distorted else [0.0] * 5
    info.k = K.reshape(-1).tolist()
    info.r = (np.eye(3) if r is None else r).reshape(-1).tolist()
    p = np.zeros((3, 4))
    p[:, :3] = K
    p[0, 0] = p[1, 1] = 40.0  # a different rectified focal length, to tell K and P apart
    info.p = p.reshape(-1).tolist()
    return info


def rgb_image() -> np.ndarray:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (H, W, 3), dtype=np.uint8)
    cv2.rectangle(img, (10, 10), (50, 30), (255, 0, 0), 2)
    return img


def image_msg(stamp_ns: int = T0, frame: str = "cam_optical") -> Image:
    return rgb_to_image_msg(rgb_image(), make_header(stamp_ns, frame))


def builder(tf=None, **kw) -> FrameBuilder:
    cams = kw.pop(
        "cameras",
        [CameraSource("front", "/cam/front/image_raw", "/cam/front/camera_info")],
    )
    config = FrameBuilderConfig(lidar_topic="/lidar/points", cameras=cams, **kw)
    return FrameBuilder(config, make_tf() if tf is None else tf)


def test_points_drop_non_finite_and_keep_the_index_map():
    msg = cloud_msg()
    points, index, n = cloud_to_points(msg)
    assert n == 6 and points.dtype == np.float32 and points.shape == (4, 4)
    assert index.tolist() == [0, 1, 4, 5]
    np.testing.assert_array_equal(points[:, 0], [1, 2, 5, 6])
    # A NaN intensity on a finite point is zeroed rather than dropping the point.
    np.testing.assert_array_equal(points[:, 3], [10, 20, 0, 60])
    points, _, _ = cloud_to_points(cloud_msg(organized=False, intensity=False))
    np.testing.assert_array_equal(points[:, 3], 0.0)


def test_frame_from_messages_and_tf():
    b = builder()
    img = image_msg()
    built = b.build_from(cloud_msg(), {"front": (img, camera_info())})
    f = built.frame
    assert f.timestamp == pytest.approx(T0 / NS) and f.index == 0
    assert built.lidar_frame == "lidar" and built.stamp_ns == T0
    assert built.num_input_points == 6 and built.valid_index.tolist() == [0, 1, 4, 5]
    # Ego pose: odom <- base_link interpolated halfway (x = 10), then the static mounting.
    expected = yaw_pose(10.0) @ tq_to_matrix([1.0, 0.0, 1.8], [0, 0, 0, 1])
    np.testing.assert_allclose(f.world_from_lidar, expected, atol=1e-9)
    assert built.pose_source == "tf"
    cam = f.cameras["front"]
    np.testing.assert_array_equal(cam.image, rgb_image())
    np.testing.assert_array_equal(cam.intrinsics, K)  # no distortion: the image's own K
    np.testing.assert_allclose(cam.cam_from_lidar, CAM_FROM_LIDAR, atol=1e-9)
    assert cam.timestamp == pytest.approx(T0 / NS)
    assert built.cameras["front"].header is img.header
    assert built.cameras["front"].extrinsics_source == "tf_fixed_frame"
    assert built.cameras_used == ["front"] and built.camera_errors == {}
    assert b.build_from(cloud_msg(), {}).frame.index == 1


def test_compressed_images_are_decoded():
    msg = rgb_to_compressed_msg(rgb_image(), make_header(T0, "cam_optical"), fmt="png")
    built = builder().build_from(cloud_msg(), {"front": (msg, camera_info())})
    np.testing.assert_array_equal(built.frame.cameras["front"].image, rgb_image())


def test_distorted_images_are_undistorted_with_the_rectified_matrix():
    info = camera_info(distorted=True)
    built = builder().build_from(cloud_msg(), {"front": (image_msg(), info)})
    cam = built.frame.cameras["front"]
    p = np.asarray(info.p).reshape(3, 4)[:, :3]
    np.testing.assert_array_equal(cam.intrinsics, p)
    m1, m2 = cv2.initUndistortRectifyMap(K, np.asarray(info.d), None, p, (W, H), cv2.CV_16SC2)
    np.testing.assert_array_equal(cam.image, cv2.remap(rgb_image(), m1, m2, cv2.INTER_LINEAR))
    assert built.cameras["front"].undistorted
    # Already rectified images are taken as they are, with the rectified matrix.
    src = CameraSource("front", rectified=True)
    built = builder(cameras=[src]).build_from(cloud_msg(), {"front": (image_msg(), info)})
    np.testing.assert_array_equal(built.frame.cameras["front"].image, rgb_image())
    np.testing.assert_array_equal(built.frame.cameras["front"].intrinsics, p)


def test_rectification_rotation_turns_the_extrinsics():
    rot = cv2.Rodrigues(np.array([0.0, 0.05, 0.0]))[0]
    built = builder().build_from(cloud_msg(), {"front": (image_msg(), camera_info(r=rot))})
    r4 = np.eye(4)
    r4[:3, :3] = rot
    np.testing.assert_allclose(
        built.frame.cameras["front"].cam_from_lidar, r4 @ CAM_FROM_LIDAR, atol=1e-9
    )


def test_extrinsics_compensate_ego_motion_between_image_and_sweep():
    img_stamp = T0 + NS // 20  # 50 ms after the sweep: the car moved 0.5 m along x
    built = builder().build_from(cloud_msg(), {"front": (image_msg(img_stamp), camera_info())})
    cam = built.frame.cameras["front"]
    tf = make_tf()
    expected = tf.lookup("cam_optical", "odom", img_stamp) @ tf.lookup("odom", "lidar", T0)
    np.testing.assert_allclose(cam.cam_from_lidar, expected, atol=1e-9)
    # A LiDAR point 10 m ahead moves 0.5 m closer in the later camera frame.
    p = cam.cam_from_lidar @ np.array([10.0, 0.0, 0.0, 1.0])
    p_static = CAM_FROM_LIDAR @ np.array([10.0, 0.0, 0.0, 1.0])
    assert p[2] == pytest.approx(p_static[2] - 0.5, abs=1e-6)
    # Without compensation: the static mounting.
    b = builder(motion_compensation=False)
    built = b.build_from(cloud_msg(), {"front": (image_msg(img_stamp), camera_info())})
    np.testing.assert_allclose(
        built.frame.cameras["front"].cam_from_lidar, CAM_FROM_LIDAR, atol=1e-9
    )
    assert built.cameras["front"].extrinsics_source == "tf"


def test_camera_errors_drop_only_that_camera():
    cams = [
        CameraSource("front", "/cam/front/image_raw", "/cam/front/camera_info"),
        CameraSource("bad_image", "/cam/bad/image_raw", "/cam/bad/camera_info"),
        CameraSource("no_info", "/cam/ni/image_raw", "/cam/ni/camera_info"),
        CameraSource("bad_info", "/cam/bi/image_raw", "/cam/bi/camera_info"),
        CameraSource("no_tf", "/cam/nt/image_raw", "/cam/nt/camera_info"),
        CameraSource("small", "/cam/s/image_raw", "/cam/s/camera_info"),
    ]
    broken = image_msg()
    broken.data = broken.data[:-5]
    bad_info = camera_info()
    bad_info.k = [0.0] * 9
    small = rgb_to_image_msg(np.zeros((10, 10, 3), np.uint8), make_header(T0, "cam_optical"))
    images = {
        "front": (image_msg(), camera_info()),
        "bad_image": (broken, camera_info()),
        "no_info": (image_msg(), None),
        "bad_info": (image_msg(), bad_info),
        "no_tf": (image_msg(frame="cam_unknown"), camera_info()),
        "small": (small, camera_info()),
    }
    built = builder(cameras=cams).build_from(cloud_msg(), images)
    assert built.cameras_used == ["front"]
    e = built.camera_errors
    assert isinstance(e["bad_image"], BadMessageError) and e["bad_image"].stream == "bad_image"
    assert e["bad_image"].topic == "/cam/bad/image_raw" and "data length" in str(e["bad_image"])
    assert str(e["no_info"]) == "/cam/ni/camera_info: no CameraInfo received yet"
    assert e["bad_info"].topic == "/cam/bi/camera_info" and "focal length" in str(e["bad_info"])
    assert isinstance(e["no_tf"], MissingTransformError)
    assert e["no_tf"].target_frame == "cam_unknown" and e["no_tf"].source_frame == "lidar"
    assert "'cam_unknown' <- 'lidar'" in str(e["no_tf"]) and "does not exist" in str(e["no_tf"])
    assert "10x10 but /cam/s/camera_info says 64x48" in str(e["small"])


def test_extrinsics_parameters_are_the_fallback():
    src = CameraSource("front", cam_from_lidar=CAM_FROM_LIDAR)
    msg = image_msg(frame="cam_unknown")
    built = builder(cameras=[src]).build_from(cloud_msg(), {"front": (msg, camera_info())})
    np.testing.assert_array_equal(built.frame.cameras["front"].cam_from_lidar, CAM_FROM_LIDAR)
    assert built.cameras["front"].extrinsics_source == "parameters"
    with pytest.raises(ValueError, match="transform"):
        CameraSource("x", cam_from_lidar=np.ones((4, 4)))


def test_ego_pose_errors_and_fallbacks():
    late = cloud_msg(stamp_ns=T0 + 5 * NS)  # beyond the odometry: extrapolation
    with pytest.raises(MissingTransformError) as e:
        builder().build_from(late, {})
    assert e.value.stream == "lidar"
    assert e.value.target_frame == "odom" and e.value.source_frame == "lidar"
    assert "'odom' <- 'lidar' at t=1700000005.000000000 s" in str(e.value)
    assert "extrapolate" in str(e.value)

    b = builder(pose_fallback="hold")
    good = b.build_from(cloud_msg(), {"front": (image_msg(), camera_info())})
    held = b.build_from(late, {"front": (image_msg(T0 + 5 * NS), camera_info())})
    assert held.pose_source == "held" and "held" in held.warnings[0]
    np.testing.assert_array_equal(held.frame.world_from_lidar, good.frame.world_from_lidar)
    # Extrinsics then come from the static mounting, not through the (missing) odometry.
    assert held.cameras["front"].extrinsics_source == "tf"
    b.reset()
    with pytest.raises(MissingTransformError):  # nothing to hold after a reset
        b.build_from(late, {})

    ident = builder(pose_fallback="identity").build_from(late, {})
    assert ident.pose_source == "identity"
    np.testing.assert_array_equal(ident.frame.world_from_lidar, np.eye(4))
    none = builder(fixed_frame="").build_from(late, {})
    assert none.pose_source == "no_fixed_frame"
    with pytest.raises(ValueError, match="pose_fallback"):
        FrameBuilderConfig(pose_fallback="guess")


def test_malformed_cloud_and_missing_frame_id():
    msg = cloud_msg()
    msg.point_step = 3
    with pytest.raises(BadMessageError) as e:
        builder().build_from(msg, {})
    assert e.value.stream == "lidar" and e.value.topic == "/lidar/points"
    anon = cloud_msg()
    anon.header.frame_id = ""
    with pytest.raises(BadMessageError, match="frame_id is empty"):
        builder().build_from(anon, {})
    # The lidar_frame parameter overrides the header.
    built = builder(lidar_frame="lidar").build_from(anon, {})
    assert built.lidar_frame == "lidar"


def test_build_from_a_synced_sweep():
    sync = SweepSynchronizer(SyncConfig(cameras=("front", "left")), clock=lambda: 0.0)
    img = image_msg(T0 + 1000)
    sync.add_camera_info("front", camera_info())
    sync.add_image("front", img)
    sync.add_sweep(cloud_msg())
    (sweep,) = sync.flush()
    cams = [CameraSource("front"), CameraSource("left")]
    built = builder(cameras=cams).build(sweep)
    assert built.cameras_used == ["front"] and "left" in built.missing
    assert built.frame.cameras["front"].timestamp == pytest.approx((T0 + 1000) / NS)
