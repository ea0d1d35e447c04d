"""The demo report's ground-truth-free fields (sam4d_ros.tools.demo.quality and report.py), on
outputs built by hand with the real message types: per object the frames with a non-empty mask
per modality, cross-modal agreement per camera, mask area and point count over time, and the
``lost`` state; and that report.md shows them.
"""

from __future__ import annotations

import numpy as np
import pytest

W, H = 64, 48
K = np.array([[50.0, 0, 32], [0, 50.0, 24], [0, 0, 1]])
# LiDAR (x forward, y left, z up) -> optical (x right, y down, z forward).
CAM_FROM_LIDAR = np.array([[0, -1, 0, 0], [0, 0, -1, 0], [1, 0, 0, 0], [0, 0, 0, 1]], float)
STAMPS = [1_000_000_000 + k * 100_000_000 for k in range(5)]


def _camera_info():
    from sensor_msgs.msg import CameraInfo

    info = CameraInfo()
    info.header.frame_id = "front_optical_frame"
    info.width, info.height = W, H
    info.k = K.reshape(-1).tolist()
    return info


def _projections():
    from sam4d_ros.tools.demo.quality import camera_projections

    static = {"front_optical_frame": ("lidar", np.linalg.inv(CAM_FROM_LIDAR))}
    return camera_projections({"front": _camera_info()}, "lidar", static)


class _OldTrackedObject:
    """A TrackedObject of a node from before it reported ``lost`` (recordings of older nodes):
    the fields quality reads, without ``lost``."""

    def __init__(self, oid: int, presence: float) -> None:
        self.id, self.presence_score = oid, presence


def _objects(*ids_presence):
    from types import SimpleNamespace

    return SimpleNamespace(objects=[_OldTrackedObject(o, p) for o, p in ids_presence])


def _outputs():
    """Object 1 over five sweeps: 0 its points inside its mask; 1 its mask on the 'sky' (away
    from its points); 2 listed with an empty mask and no point; 3 dropped by the node; 4 not
    listed any more. Object 2 is prompted on sweep 1, a point-only object out of the camera."""
    from sam4d_ros.tools.demo.report import FrameOutputs

    # Object 1's points: 10 m ahead, around the optical axis -> pixels around (32, 24).
    pts1 = np.array([[10.0, y, z] for y in (-0.4, 0.0, 0.4) for z in (-0.4, 0.0, 0.4)])
    pts2 = np.array([[-10.0, 0, 0], [-10.0, 1, 0]])  # behind the camera
    other = np.array([[5.0, 3.0, 0.0]])
    xyz = np.concatenate([pts1, pts2, other]).astype(np.float32)
    frames = {}
    for k, s in enumerate(STAMPS):
        if k == 3:
            continue  # dropped: no outputs at all
        fo = FrameOutputs(s)
        lab = np.zeros((H, W), np.uint16)
        labels = np.zeros(len(xyz), np.uint32)
        listed = [(1, 0.99)] if k < 4 else []
        if k >= 1:
            listed.append((2, 0.9))
            labels[9:11] = 2
        if k == 0:
            lab[14:35, 22:43] = 1  # covers the projections of pts1 (x, y in 28..36 / 20..28)
            labels[:9] = 1
        elif k == 1:
            lab[0:6, 0:10] = 1  # the sky: none of pts1 lands there
            labels[:9] = 1
        fo.objects = _objects(*listed)
        fo.labels = {"front": lab}
        fo.cloud_xyz, fo.cloud_labels = xyz, labels
        frames[s] = fo
    return frames


def test_projection_and_agreement() -> None:
    from sam4d_ros.tools.demo.quality import agreement

    cam = _projections()["front"]
    np.testing.assert_allclose(cam.cam_from_lidar, CAM_FROM_LIDAR)
    px, inside = cam.project(np.array([[10.0, 0, 0], [10.0, 0.4, 0.4], [-10.0, 0, 0]]))
    assert inside.tolist() == [True, True, False]
    assert px[0].tolist() == [32, 24] and px[1].tolist() == [30, 22]
    mask = np.zeros((H, W), bool)
    mask[24, 32] = True
    share, n = agreement(np.array([[10.0, 0, 0], [10.0, 0.4, 0.4], [-10.0, 0, 0]]), mask, cam)
    assert (share, n) == (0.5, 2)  # the point behind the camera does not count
    assert agreement(np.zeros((0, 3)), mask, cam) == (None, 0)


def test_each_objects_signals_without_ground_truth() -> None:
    from sam4d_ros.tools.demo.quality import object_quality

    frames, proj = _outputs(), _projections()
    q1 = object_quality(1, STAMPS, frames, ["front"], proj).summary(["front"])
    # Frames with a non-empty mask per modality (sweeps 0 and 1 in both).
    assert q1["frames_with_mask"] == {"lidar": 2, "front": 2}
    assert q1["frames_with_output"] == 4 and q1["first_frame"] == 0
    # Cross-modal agreement: 1 on sweep 0, 0 on the sky mask of sweep 1; the mean of both.
    per = [f["agreement"].get("front") for f in q1["over_time"]]
    assert per == [1.0, 0.0, None, None, None]
    assert q1["cross_modal_agreement"] == {"front": 0.5}
    # Mask area and point count over time.
    assert [f["points"] for f in q1["over_time"]] == [9, 9, 0, 0, 0]
    assert [f["mask_px"].get("front") for f in q1["over_time"]] == [441, 60, 0, None, None]
    assert [f["status"] for f in q1["over_time"]] == [
        "output", "output", "output", "no_output", "not_listed",
    ]  # fmt: skip
    # Lost: empty everywhere on sweep 2 (presence still 0.99), not listed on sweep 4; unknown on
    # the dropped sweep 3.
    assert [f["lost"] for f in q1["over_time"]] == [False, False, True, None, True]
    assert [f["presence_score"] for f in q1["over_time"]][:3] == pytest.approx([0.99] * 3)
    assert q1["lost_frames"] == [2, 4] and q1["frames_lost"] == 2 and q1["lost"] is True
    assert q1["lost_source"].startswith("derived")
    # Object 2: from its first listing on; points only, behind the camera -> no agreement.
    q2 = object_quality(2, STAMPS, frames, ["front"], proj).summary(["front"])
    assert q2["first_frame"] == 1 and q2["frames_with_mask"] == {"lidar": 3, "front": 0}
    assert q2["cross_modal_agreement"] == {"front": None} and q2["lost"] is False
    assert [f["points_in_view"].get("front") for f in q2["over_time"]] == [0, 0, None, 0]


def test_the_trackers_own_lost_state_wins_when_the_message_has_it() -> None:
    from sam4d_ros.tools.demo.quality import object_quality

    frames = _outputs()

    class WithLost:  # a TrackedObject of a node that reports lost (issue 18): same fields + lost
        def __init__(self, o, lost):
            self.id, self.presence_score, self.lost = o.id, o.presence_score, lost

    for fo in frames.values():
        fo.objects.objects = [WithLost(o, False) for o in fo.objects.objects]
    q = object_quality(1, STAMPS, frames, ["front"], {}).summary(["front"])
    assert q["lost_source"] == "tracker"
    assert [f["lost"] for f in q["over_time"]] == [False, False, False, None, True]
    assert q["cross_modal_agreement"] == {"front": None}  # no projection: not computed


def test_report_md_shows_the_fields() -> None:
    from sam4d_ros.tools.demo.quality import object_quality
    from sam4d_ros.tools.demo.report import objects_markdown

    frames, proj = _outputs(), _projections()
    objs = [
        {
            "object_id": oid,
            "mean_presence_score": 0.99,
            **object_quality(oid, STAMPS, frames, ["front"], proj).summary(["front"]),
        }
        for oid in (1, 2)
    ]
    md = "\n".join(objects_markdown({"objects": objs, "cross_modal_cameras": ["front"]}))
    assert (
        "| id | frames | non-empty LiDAR | non-empty front | agreement front | lost frames |" in md
    )
    assert "| 1 | 4 | 2 | 2 | 0.500 | 2 | yes | 0.990 |" in md
    assert "| 2 | 3 | 3 | 0 | n/a | 0 | no | 0.990 |" in md
    assert "| 1 | 9 | 60 | 0.00 | 0.990 |  |" in md  # sweep 1: the sky mask
    assert "| 2 | 0 | 0 | n/a | 0.990 | LOST |" in md
    assert "| 3 | (no output: dropped or failed) |" in md
