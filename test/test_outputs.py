"""Tracker results -> output messages (sam4d_ros.outputs, sam4d_core.geometry.boxes), with real
sensor_msgs / visualization_msgs / diagnostic_msgs / sam4d_ros types: label images and overlays,
the labeled cloud on the full input cloud, TrackedObjects with fitted boxes, markers and
diagnostics."""

from __future__ import annotations

import math

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.serialization import deserialize_message, serialize_message
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from visualization_msgs.msg import Marker, MarkerArray

from sam4d_core.codecs.image import label_color
from sam4d_core.codecs.transform import tq_to_matrix
from sam4d_core.geometry.boxes import BOX_EDGES, Box3D, fit_box_3d, mask_box_2d
from sam4d_core.geometry.tf_buffer import TfBuffer
from sam4d_core.tracking.records import ObjectResult, StepResult
from sam4d_ros.conversions.image import image_to_array, rgb_to_image_msg
from sam4d_ros.conversions.pointcloud2 import array_to_pointcloud2, pointcloud2_to_array
from sam4d_ros.conversions.stamps import make_header
from sam4d_ros.frame_builder import CameraSource, FrameBuilder, FrameBuilderConfig
from sam4d_ros.msg import TrackedObjects
from sam4d_ros.outputs import (
    BOX_NAMESPACE,
    TEXT_NAMESPACE,
    OutputConfig,
    OutputError,
    StepOutputs,
    camera_status,
    compose_label_image,
    diagnostic_array,
    processing_status,
    resolve_point_labels,
    stream_status,
)
from sam4d_ros.sync import CameraSyncCounters

NS = 1_000_000_000
T0 = 1_700_000_000 * NS
W, H = 32, 24


# ------------------------------------------------------------------------------ boxes


def test_fit_box_3d_recovers_an_oriented_box():
    rng = np.random.default_rng(1)
    yaw = 0.6
    local = rng.uniform([-2.0, -0.9, -0.7], [2.0, 0.9, 0.7], (500, 3))
    local[:4, :2] = [[-2, -0.9], [2, -0.9], [2, 0.9], [-2, 0.9]]  # the extremes are present
    local[:2, 2] = [-0.7, 0.7]
    c, s = math.cos(yaw), math.sin(yaw)
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    center = np.array([1000.0, -500.0, 1.2])  # far from the origin: float32 precision in cv2
    box = fit_box_3d(local @ rot.T + center)
    np.testing.assert_allclose(box.center, center, atol=2e-3)
    np.testing.assert_allclose(box.size, [4.0, 1.8, 1.4], atol=2e-3)
    assert box.yaw == pytest.approx(yaw, abs=1e-3)
    # The same box turned by a half turn has the same yaw (normalized to (-pi/2, pi/2]).
    box2 = fit_box_3d(local @ (-rot[:, :]).T * [1, 1, -1] + center)
    assert box2.yaw == pytest.approx(yaw, abs=1e-3)
    corners = box.corners()
    assert corners.shape == (8, 3) and len(BOX_EDGES) == 12
    np.testing.assert_allclose(corners.mean(axis=0), box.center, atol=1e-9)
    q = box.quaternion()
    assert q == pytest.approx([0, 0, math.sin(yaw / 2), math.cos(yaw / 2)])


def test_fit_box_3d_degenerate_inputs():
    assert fit_box_3d(np.zeros((0, 3))) is None
    one = fit_box_3d(np.array([[1.0, 2.0, 3.0]]))
    np.testing.assert_allclose(one.center, [1, 2, 3], atol=1e-6)
    np.testing.assert_allclose(one.size, 0.0, atol=1e-6)
    line = fit_box_3d(np.array([[0.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 1.0, 0.5]]))
    assert line.size[0] == pytest.approx(2.0) and line.size[1] == pytest.approx(0.0, abs=1e-6)
    assert abs(line.yaw) == pytest.approx(math.pi / 2)
    with pytest.raises(ValueError, match="non-finite"):
        fit_box_3d(np.array([[np.nan, 0.0, 0.0]]))


def test_mask_box_2d_uses_pixel_edges():
    mask = np.zeros((10, 12), bool)
    assert mask_box_2d(mask) is None
    mask[5, 7] = True
    b = mask_box_2d(mask)
    assert (b.u_min, b.v_min, b.u_max, b.v_max, b.area) == (7, 5, 8, 6, 1)
    mask[2:4, 1:3] = True
    b = mask_box_2d(mask.astype(np.uint8))
    assert (b.u_min, b.v_min, b.u_max, b.v_max, b.area) == (1, 2, 8, 6, 5)


def test_compose_label_image_higher_score_wins():
    a = np.zeros((4, 4), bool)
    a[:, :3] = True
    b = np.zeros((4, 4), bool)
    b[:, 2:] = True
    labels = compose_label_image([(1, 0.9, a), (2, 0.5, b)], (4, 4))
    assert labels.dtype == np.uint16 and labels[0].tolist() == [1, 1, 1, 2]
    labels = compose_label_image([(1, 0.4, a), (2, 0.5, b)], (4, 4))
    assert labels[0].tolist() == [1, 1, 2, 2]
    labels = compose_label_image([(7, 0.5, a), (3, 0.5, b)], (4, 4))  # tie: lower id
    assert labels[0].tolist() == [7, 7, 3, 3]
    with pytest.raises(OutputError, match="mask of object 1 is 2x2, image is 4x4"):
        compose_label_image([(1, 0.5, np.ones((2, 2), bool))], (4, 4))


def test_resolve_point_labels_uses_per_point_scores():
    o1 = ObjectResult(1, 0.9, 0.8, {}, np.array([1, 1, 0], bool), np.array([0.8, 0.6, 0.1]))
    o2 = ObjectResult(2, 0.9, 0.8, {}, np.array([0, 1, 1], bool), np.array([0.9, 0.7, 0.6]))
    labels, scores = resolve_point_labels([o2, o1], 3)
    assert labels.tolist() == [1, 2, 2] and labels.dtype == np.uint32
    np.testing.assert_allclose(scores, [0.8, 0.7, 0.6])
    with pytest.raises(OutputError, match="do not match the frame's 4 points"):
        resolve_point_labels([o1], 4)


# ------------------------------------------------------------------------------ one step


def built_frame():
    arr = np.zeros((2, 3), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("intensity", "<f4")])
    flat = arr.reshape(-1)
    flat["x"] = [1.0, 2.0, np.nan, 4.0, 5.0, 6.0]
    flat["y"] = [0.0, 1.0, 0.0, np.nan, 1.0, 2.0]
    flat["z"] = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    flat["intensity"] = np.arange(6)
    cloud = array_to_pointcloud2(arr, make_header(T0, "lidar"))
    rgb = np.full((H, W, 3), 100, np.uint8)
    image = rgb_to_image_msg(rgb, make_header(T0 + 1234, "front_optical"))
    info = CameraInfo(width=W, height=H, distortion_model="plumb_bob", d=[0.0] * 5)
    info.k = [20.0, 0, 16, 0, 20.0, 12, 0, 0, 1]
    tf = TfBuffer()
    tf.set_transform("lidar", "front_optical", 0, np.eye(4), static=True)
    config = FrameBuilderConfig(cameras=[CameraSource("front")], fixed_frame="")
    built = FrameBuilder(config, tf).build_from(cloud, {"front": (image, info)})
    assert built.valid_index.tolist() == [0, 1, 4, 5]
    return built


def step_result() -> StepResult:
    m1 = np.zeros((H, W), bool)
    m1[2:10, 3:15] = True
    m2 = np.zeros((H, W), bool)
    m2[8:20, 10:30] = True
    m3 = np.ones((H, W), bool)
    return StepResult(
        timestamp=T0 / NS,
        frame_index=0,
        objects=[
            ObjectResult(1, 0.9, 0.8, {"front": m1}, np.array([1, 1, 0, 0], bool),
                         np.array([0.8, 0.7, 0.0, 0.0], np.float32)),
            ObjectResult(2, 0.6, 0.7, {"front": m2}, np.array([0, 1, 1, 0], bool),
                         np.array([0.0, 0.9, 0.6, 0.0], np.float32)),
            ObjectResult(3, 0.2, 0.5, {"front": m3}, np.ones(4, bool),
                         np.full(4, 0.99, np.float32)),
            # Lost by the re-prompting tracker: absent, empty masks.
            ObjectResult(4, 0.0, 0.0, {"front": np.zeros((H, W), bool)}, np.zeros(4, bool),
                         np.zeros(4, np.float32), lost=True),
        ],
    )  # fmt: skip


def test_label_image_and_overlay_messages():
    built = built_frame()
    out = StepOutputs(step_result(), built, OutputConfig(overlay_alpha=1.0, overlay_boxes=False))
    assert out.cameras == ["front"] and [o.object_id for o in out.present] == [1, 2]
    msg = deserialize_message(serialize_message(out.label_image_msg("front")), Image)
    assert msg.encoding == "mono16" and (msg.width, msg.height) == (W, H)
    assert msg.header.frame_id == "front_optical" and msg.header.stamp.nanosec == 1234
    labels = image_to_array(msg)
    assert labels[5, 5] == 1 and labels[15, 20] == 2 and labels[0, 0] == 0
    assert labels[9, 12] == 1  # overlap: object 1 has the higher presence score
    assert not (labels == 3).any()  # absent object
    ov = out.overlay_msg("front")
    assert ov.encoding == "rgb8" and ov.header.frame_id == "front_optical"
    rgb = image_to_array(ov)
    assert tuple(rgb[5, 5]) == label_color(1) and tuple(rgb[15, 20]) == label_color(2)
    assert tuple(rgb[0, 0]) == (100, 100, 100)
    with pytest.raises(KeyError, match="camera 'left' is not in this frame"):
        out.label_image("left")
    # With boxes drawn, the box outline has the object's colour too.
    boxed = image_to_array(StepOutputs(step_result(), built).overlay_msg("front"))
    assert tuple(boxed[2, 3]) == label_color(1)


def test_labeled_cloud_covers_the_full_input_cloud():
    built = built_frame()
    out = StepOutputs(step_result(), built)
    msg = deserialize_message(serialize_message(out.labeled_cloud_msg()), PointCloud2)
    assert (msg.height, msg.width) == (2, 3)
    assert msg.header.frame_id == "lidar" and msg.header.stamp.sec == T0 // NS
    assert [f.name for f in msg.fields] == ["x", "y", "z", "intensity", "label", "score"]
    arr = pointcloud2_to_array(msg).reshape(-1)
    assert arr["label"].tolist() == [1, 2, 0, 0, 2, 0]  # NaN points 2 and 3 get 0
    np.testing.assert_allclose(arr["score"], [0.8, 0.9, 0, 0, 0.6, 0])
    np.testing.assert_array_equal(arr["intensity"], np.arange(6))


def test_tracked_objects_with_boxes():
    out = StepOutputs(step_result(), built_frame())
    msg = deserialize_message(serialize_message(out.tracked_objects_msg()), TrackedObjects)
    assert msg.header.frame_id == "lidar" and list(msg.cameras_used) == ["front"]
    assert [o.id for o in msg.objects] == [1, 2, 3, 4]
    o1, o2, o3, o4 = msg.objects
    assert [o.lost for o in msg.objects] == [False, False, False, True]
    assert o4.presence_score == 0.0 and o4.num_points == 0 and len(o4.camera_boxes) == 0
    assert o1.num_points == 1 and o1.lidar_score == pytest.approx(0.8)
    assert o2.num_points == 2 and o2.lidar_score == pytest.approx(0.75)
    assert o2.presence_score == pytest.approx(0.6) and o2.predicted_iou == pytest.approx(0.7)
    assert o2.has_box_3d
    # Object 2's points: (2, 1, 0.2) and (5, 1, 0.5): a box along x.
    assert (o2.box_pose.position.x, o2.box_pose.position.y) == pytest.approx((3.5, 1.0), abs=1e-5)
    assert o2.box_pose.position.z == pytest.approx(0.35)
    assert (o2.box_size.x, o2.box_size.z) == pytest.approx((3.0, 0.3), abs=1e-5)
    (cb,) = o1.camera_boxes
    assert cb.camera_name == "front" and (cb.u_min, cb.v_min, cb.u_max, cb.v_max) == (3, 2, 15, 10)
    assert cb.area == 8 * 12
    # Absent: scores kept, nothing else.
    assert o3.presence_score == pytest.approx(0.2)
    assert o3.num_points == 0 and not o3.has_box_3d and len(o3.camera_boxes) == 0


def test_markers_clear_first_and_are_stable_per_object():
    out = StepOutputs(step_result(), built_frame())
    msg = deserialize_message(serialize_message(out.marker_array_msg()), MarkerArray)
    first, *rest = msg.markers
    assert first.action == Marker.DELETEALL
    assert [(m.ns, m.id, m.type) for m in rest] == [
        (BOX_NAMESPACE, 1, Marker.LINE_LIST),
        (TEXT_NAMESPACE, 1, Marker.TEXT_VIEW_FACING),
        (BOX_NAMESPACE, 2, Marker.LINE_LIST),
        (TEXT_NAMESPACE, 2, Marker.TEXT_VIEW_FACING),
    ]
    box2 = rest[2]
    assert box2.header.frame_id == "lidar" and len(box2.points) == 24
    r, g, b = label_color(2)
    assert (box2.color.r, box2.color.g, box2.color.b, box2.color.a) == pytest.approx(
        (r / 255, g / 255, b / 255, 1.0)
    )
    xs = sorted({round(p.x, 4) for p in box2.points})
    assert xs == [-1.5, 1.5]  # box-local corners, the pose places them
    assert rest[3].text == "2 (0.60)"
    assert rest[1].pose.position.z > rest[0].pose.position.z
    # One point: still drawn, with the minimum size.
    assert {round(abs(p.y), 4) for p in rest[0].points} == {0.05}


def test_outputs_reject_results_that_do_not_fit():
    built = built_frame()
    bad = StepResult(0.0, 0, [ObjectResult(1, 0.9, 0.9, {}, np.ones(5, bool), np.ones(5))])
    with pytest.raises(OutputError, match="frame's 4 points"):
        StepOutputs(bad, built).labeled_cloud_msg()
    with pytest.raises(OutputError, match="outside"):
        StepOutputs(StepResult(0.0, 0, [ObjectResult(0, 1, 1, {}, np.ones(4), np.ones(4))]), built)
    wrong = StepResult(0.0, 0, [ObjectResult(1, 0.9, 0.9, {"front": np.ones((2, 2), bool)},
                                             np.zeros(4, bool), np.zeros(4))])  # fmt: skip
    with pytest.raises(OutputError, match="mask of object 1 on camera 'front'"):
        StepOutputs(wrong, built).tracked_objects_msg()


def test_nothing_is_computed_before_it_is_asked_for():
    out = StepOutputs(step_result(), built_frame())
    assert out._label_images == {} and out._points is None and out._boxes is None
    out.label_image_msg("front")
    assert out._points is None  # images do not need the points
    out.marker_array_msg()
    assert out._points is not None and set(out._boxes) == {1, 2}


def test_box3d_pose_round_trip_in_markers():
    box = Box3D(np.array([1.0, 2.0, 3.0]), np.array([4.0, 2.0, 1.0]), 0.3)
    corners = box.corners()
    pose = tq_to_matrix(box.center, box.quaternion())
    local = (np.linalg.inv(pose) @ np.c_[corners, np.ones(8)].T).T[:, :3]
    np.testing.assert_allclose(np.abs(local), [[2.0, 1.0, 0.5]] * 8, atol=1e-9)


# ------------------------------------------------------------------------------ diagnostics


def test_diagnostics_levels_and_values():
    ok = stream_status("sam4d_node: lidar", values={"sweeps": 10, "rate_hz": 9.87, "ok": True})
    assert ok.level == DiagnosticStatus.OK and ok.message == "OK"
    assert [(kv.key, kv.value) for kv in ok.values] == [
        ("sweeps", "10"), ("rate_hz", "9.870"), ("ok", "true"),
    ]  # fmt: skip
    warn = stream_status("x", warnings=["a", "b"])
    assert warn.level == DiagnosticStatus.WARN and warn.message == "a; b"
    err = stream_status("x", errors=["broken"], warnings=["a"])
    assert err.level == DiagnosticStatus.ERROR and err.message == "broken"

    fast = processing_status("sam4d_node: processing", 80.0, 150.0, values={"dropped": 0})
    assert fast.level == DiagnosticStatus.OK and fast.message == "80.0 ms"
    slow = processing_status("sam4d_node: processing", 180.0, 150.0)
    assert slow.level == DiagnosticStatus.WARN
    assert slow.message == "processing took 180.0 ms, over the 150 ms budget"
    assert processing_status("p", None, 150.0).level == DiagnosticStatus.WARN

    counters = CameraSyncCounters(received=10, matched=8, missing=2, too_old=2)
    cam_ok = camera_status("sam4d_node: camera front", counters)
    assert cam_ok.level == DiagnosticStatus.OK
    assert {kv.key: kv.value for kv in cam_ok.values}["too_old"] == "2"
    missing = camera_status("c", counters, missing="no image received")
    assert missing.level == DiagnosticStatus.WARN
    assert missing.message == "missing in the last sweep: no image received"
    bad = camera_status("c", counters, error="/cam/image_raw: data length 5 != 6")
    assert bad.level == DiagnosticStatus.ERROR

    arr = diagnostic_array([ok, slow, bad], make_header(T0, "").stamp)
    arr = deserialize_message(serialize_message(arr), DiagnosticArray)
    assert [s.level for s in arr.status] == [
        DiagnosticStatus.OK, DiagnosticStatus.WARN, DiagnosticStatus.ERROR
    ]  # fmt: skip
    assert arr.header.stamp.sec == T0 // NS
