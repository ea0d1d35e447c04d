"""Prompt messages, RViz and image-viewer clicks -> tracker ObjectPrompts (sam4d_ros.prompts), with
the real sam4d_ros/geometry_msgs types: id allocation, grouping, TF, undistortion, and a precise
error for each invalid case, with nothing changed when a request is refused."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from geometry_msgs.msg import Point, PointStamped

from sam4d_core.codecs.camera import camera_model_from_values
from sam4d_core.codecs.transform import tq_to_matrix
from sam4d_core.geometry.tf_buffer import TfBuffer
from sam4d_core.tracking.records import ObjectPrompt
from sam4d_ros.conversions.image import array_to_image_msg
from sam4d_ros.conversions.stamps import make_header, ns_to_time_msg
from sam4d_ros.msg import Prompt
from sam4d_ros.prompts import (
    CameraGeometry,
    ObjectIdRegistry,
    PromptContext,
    PromptConverter,
    PromptError,
    PromptLimits,
    validate_remove,
)
from sam4d_ros.srv import AddPrompts, RemoveObject

NS = 1_000_000_000
T0 = 1_700_000_000 * NS
NEWEST = T0 + 3 * NS
# map <- lidar: the LiDAR 100 m east of the map origin, turned 90 degrees left, at both stamps.
MAP_FROM_LIDAR = tq_to_matrix(
    [100.0, 0.0, 0.0], [0, 0, math.sin(math.pi / 4), math.cos(math.pi / 4)]
)


def context(**kw) -> PromptContext:
    tf = TfBuffer()
    for stamp in (T0, NEWEST + NS):
        tf.set_transform("map", "lidar", stamp, MAP_FROM_LIDAR)
    defaults = dict(
        cameras={"front": CameraGeometry("front", 640, 480), "left": None},
        lidar_frame="lidar",
        newest_stamp_ns=NEWEST,
        frame_buffer_s=2.0,
        tf=tf,
    )
    defaults.update(kw)
    return PromptContext(**defaults)


def pts(*xyz) -> list[Point]:
    return [Point(x=float(p[0]), y=float(p[1]), z=float(p[2]) if len(p) > 2 else 0.0) for p in xyz]


def image_prompt(
    camera="front", points=((10, 20),), labels=(1,), obj=0, stamp_ns=0, **kw
) -> Prompt:
    p = Prompt(object_id=obj, modality=Prompt.IMAGE, camera_name=camera)
    p.header.stamp = ns_to_time_msg(stamp_ns)
    p.points = pts(*points)
    p.labels = list(labels)
    for k, v in kw.items():
        setattr(p, k, v)
    return p


def lidar_prompt(points=((5.0, 1.0, 0.5),), labels=(1,), obj=0, frame="", stamp_ns=0, **kw):
    p = Prompt(object_id=obj, modality=Prompt.LIDAR)
    p.header.frame_id = frame
    p.header.stamp = ns_to_time_msg(stamp_ns)
    p.points = pts(*points)
    p.labels = list(labels)
    for k, v in kw.items():
        setattr(p, k, v)
    return p


def converter(max_objects=8, **kw) -> PromptConverter:
    return PromptConverter(ObjectIdRegistry(max_objects), PromptLimits(**kw))


def test_an_add_prompts_request_becomes_object_prompts():
    conv = converter()
    req = AddPrompts.Request()
    req.prompts = [
        image_prompt(points=((10, 20), (30, 40)), labels=(1, 0)),
        lidar_prompt(obj=0),
        image_prompt(obj=5, has_box=True, box=[1.0, 2.0, 30.0, 40.0], points=(), labels=()),
        lidar_prompt(obj=5, stamp_ns=T0 + 2 * NS),
    ]
    batch = conv.convert_prompts(req.prompts, req.clear_previous_prompts, context())
    assert batch.object_ids == [1, 2, 5, 5]  # new objects skip the explicit id 5
    assert sorted(batch.new_ids) == [1, 2, 5]
    assert conv.ids.tracked() == {1, 2, 5}
    by = {(p.object_id, p.stamp): p for p in batch.prompts}
    assert len(by) == 4  # object 5 has prompts on two frames
    p1 = by[(1, None)]
    assert isinstance(p1, ObjectPrompt) and p1.lidar is None and not p1.clear_previous
    (img,) = p1.image
    assert img.camera == "front"
    np.testing.assert_array_equal(img.points, [[10, 20], [30, 40]])
    assert img.labels.dtype == np.int64 and img.labels.tolist() == [1, 0]
    np.testing.assert_array_equal(by[(2, None)].lidar.points, [[5.0, 1.0, 0.5]])
    np.testing.assert_array_equal(by[(5, None)].image[0].box, [1, 2, 30, 40])
    assert by[(5, (T0 + 2 * NS) / NS)].lidar is not None
    resp = AddPrompts.Response(success=True, object_ids=batch.object_ids)
    assert list(resp.object_ids) == [1, 2, 5, 5]


def test_prompts_of_one_object_and_frame_are_merged_and_cleared_once():
    conv = converter()
    msgs = [
        image_prompt(obj=3, points=((1, 1),), labels=(1,)),
        image_prompt(obj=3, points=((2, 2),), labels=(0,)),
        image_prompt(obj=3, camera="front", points=(), labels=(), has_box=True, box=[0, 0, 9, 9]),
        lidar_prompt(obj=3),
        lidar_prompt(obj=3, points=((6.0, 1.0, 0.5),), labels=(0,)),
        lidar_prompt(obj=3, stamp_ns=T0 + 2 * NS),
    ]
    batch = conv.convert_prompts(msgs, True, context())
    assert [p.clear_previous for p in batch.prompts] == [True, False]
    merged = batch.prompts[0]
    (img,) = merged.image
    np.testing.assert_array_equal(img.points, [[1, 1], [2, 2]])
    assert img.labels.tolist() == [1, 0] and img.box is not None
    assert merged.lidar.labels.tolist() == [1, 0] and merged.lidar.points.shape == (2, 3)


def test_lidar_prompts_in_another_frame_go_through_tf():
    conv = converter()
    box = [99.0, 4.0, 101.0, 7.0]  # map frame: 4..7 m north of the LiDAR
    msg = lidar_prompt(frame="map", points=((100.0, 5.0, 1.0),), stamp_ns=T0 + 2 * NS,
                       has_box=True, box=box)  # fmt: skip
    (p,) = conv.convert_prompts([msg], False, context()).prompts
    np.testing.assert_allclose(p.lidar.points, [[5.0, 0.0, 1.0]], atol=1e-9)  # 5 m ahead
    np.testing.assert_allclose(p.lidar.box, [4.0, -1.0, 7.0, 1.0], atol=1e-9)
    assert p.stamp == pytest.approx((T0 + 2 * NS) / NS)


def test_clicked_point_in_the_map_becomes_a_new_lidar_object():
    conv = converter()
    msg = PointStamped()
    msg.header = make_header(NEWEST + NS // 2, "map")  # RViz stamps "now"
    msg.point.x, msg.point.y, msg.point.z = 100.0, 8.0, 0.2
    batch = conv.clicked_point(msg, context())
    (p,) = batch.prompts
    assert batch.object_ids == [1] and p.object_id == 1 and p.image == []
    assert p.stamp == pytest.approx(NEWEST / NS)  # applied on the newest frame
    np.testing.assert_allclose(p.lidar.points, [[8.0, 0.0, 0.2]], atol=1e-9)
    assert p.lidar.labels.tolist() == [1]
    # In the LiDAR frame itself no TF is needed; an old click is applied on its own frame.
    msg.header = make_header(NEWEST - NS, "lidar")
    (p2,) = conv.clicked_point(msg, context(tf=None)).prompts
    assert p2.object_id == 2 and p2.stamp == pytest.approx((NEWEST - NS) / NS)
    np.testing.assert_array_equal(p2.lidar.points, [[100.0, 8.0, 0.2]])


def test_image_click_becomes_a_new_image_object():
    conv = converter()
    batch = conv.image_click("front", Point(x=320.0, y=240.0), context(), stamp_ns=NEWEST)
    (p,) = batch.prompts
    assert p.image[0].camera == "front" and p.image[0].points.tolist() == [[320.0, 240.0]]
    assert p.stamp == pytest.approx(NEWEST / NS) and p.lidar is None
    with pytest.raises(PromptError, match=r"pixel \(641, 10\) is outside the 640x480 image"):
        conv.image_click("front", Point(x=641.0, y=10.0), context())
    with pytest.raises(PromptError, match="unknown camera"):
        conv.image_click("rear", Point(x=1.0, y=1.0), context())
    with pytest.raises(PromptError, match="size is not known yet"):
        conv.image_click("left", Point(x=1.0, y=1.0), context())
    assert conv.ids.tracked() == {1}


def mask_msg(mask: np.ndarray, encoding="mono8"):
    return array_to_image_msg(mask.astype(np.uint8) * 255, encoding)


BAD_CASES = [
    ("unknown camera",
     [image_prompt(camera="rear")],
     "prompt 0 (new object, IMAGE on camera 'rear'): unknown camera 'rear' (cameras: 'front', "
     "'left')"),
    ("pixel outside",
     [image_prompt(), image_prompt(points=((10, 20), (700, 20)), labels=(1, 1))],
     "prompt 1 (new object, IMAGE on camera 'front'): point 1 (700, 20) is outside the 640x480 "
     "image"),
    ("size unknown",
     [image_prompt(camera="left")],
     "the size of camera 'left' is not known yet"),
    ("empty",
     [image_prompt(points=(), labels=())],
     "nothing to prompt with: no points, no box, no mask"),
    ("empty lidar",
     [lidar_prompt(points=(), labels=())],
     "prompt 0 (new object, LIDAR): nothing to prompt with: no points and no box"),
    ("labels length",
     [image_prompt(points=((1, 1), (2, 2)), labels=(1,))],
     "1 label(s) for 2 point(s)"),
    ("label value",
     [image_prompt(labels=(2,))],
     "label 0 is 2; labels must be 1 (foreground) or 0 (background)"),
    ("non-finite point",
     [lidar_prompt(points=((1.0, float("nan"), 0.0),))],
     "point 0 [1.0, nan, 0.0] is not finite"),
    ("non-finite box",
     [lidar_prompt(has_box=True, box=[0.0, 0.0, float("inf"), 1.0])],
     "box [0.0, 0.0, inf, 1.0] has non-finite values"),
    ("box min > max",
     [image_prompt(has_box=True, box=[50.0, 10.0, 20.0, 40.0])],
     "box u_min 50 must be less than u_max 20"),
    ("lidar box",
     [lidar_prompt(has_box=True, box=[0.0, 3.0, 1.0, 2.0])],
     "box y_min 3 must be less than y_max 2"),
    ("box outside",
     [image_prompt(has_box=True, box=[10.0, 10.0, 700.0, 40.0])],
     "box [10.0, 10.0, 700.0, 40.0] is not inside the 640x480 image"),
    ("mask size",
     [image_prompt(points=(), labels=(), mask=mask_msg(np.ones((10, 10), bool)))],
     "mask is 10x10 but camera 'front' images are 640x480"),
    ("mask encoding",
     [image_prompt(mask=array_to_image_msg(np.zeros((480, 640, 3), np.uint8), "rgb8"))],
     "mask encoding 'rgb8' is not supported; use mono8"),
    ("mask empty",
     [image_prompt(mask=mask_msg(np.zeros((480, 640), bool)))],
     "mask has no non-zero pixel"),
    ("lidar mask",
     [lidar_prompt(mask=mask_msg(np.ones((480, 640), bool)))],
     "masks are for IMAGE prompts only"),
    ("modality",
     [Prompt(modality=7)],
     "prompt 0 (new object, modality 7): unknown modality 7 (IMAGE = 0, LIDAR = 1)"),
    ("id too large",
     [image_prompt(obj=70000)],
     "object_id 70000 exceeds 65535"),
    ("stamp too old",
     [image_prompt(stamp_ns=NEWEST - 2 * NS - NS // 2)],
     "stamp 1700000000.500000000 s is 2.500 s older than the newest frame (1700000003.000000000"
     " s) but the frame buffer keeps only 2.0 s (frame_buffer_s)"),
    ("frame without transform",
     [lidar_prompt(frame="base_link", stamp_ns=NEWEST)],
     "no transform from frame 'base_link' into the LiDAR frame 'lidar' at "
     "t=1700000003.000000000 s: frame 'base_link' does not exist"),
    ("two boxes",
     [image_prompt(obj=4, has_box=True, box=[0.0, 0.0, 5.0, 5.0]),
      image_prompt(obj=4, has_box=True, box=[1.0, 1.0, 5.0, 5.0])],
     "prompts 0 and 1 both give a box for object 4 on camera 'front'"),
    ("too many points",
     [image_prompt(points=[(1, 1)] * 300, labels=[1] * 300)],
     "300 points; at most 256 per prompt"),
    ("no prompts", [], "the request has no prompts"),
]  # fmt: skip


@pytest.mark.parametrize("case", BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_invalid_requests_say_what_is_wrong_and_change_nothing(case):
    _, msgs, expected = case
    conv = converter()
    with pytest.raises(PromptError) as e:
        conv.convert_prompts(msgs, False, context())
    assert expected in str(e.value)
    assert conv.ids.tracked() == frozenset()
    # The next valid request still starts at id 1: the failed one allocated nothing.
    assert conv.convert_prompts([image_prompt()], False, context()).object_ids == [1]


def test_frame_without_transform_before_any_sweep():
    conv = converter()
    with pytest.raises(PromptError, match="the LiDAR frame is not known yet"):
        conv.convert_prompts([lidar_prompt(frame="map")], False, context(lidar_frame=None))


def test_object_limit_and_id_allocation():
    conv = converter(max_objects=3)
    assert conv.convert_prompts([image_prompt(obj=2)], False, context()).new_ids == [2]
    batch = conv.convert_prompts([image_prompt(), image_prompt()], False, context())
    assert batch.object_ids == [1, 3]
    with pytest.raises(PromptError, match=r"would create 1 new object\(s\) but 3 of at most 3"):
        conv.convert_prompts([image_prompt()], False, context())
    # Refining a tracked object needs no free slot.
    assert conv.convert_prompts([image_prompt(obj=3)], False, context()).new_ids == []
    conv.ids.release([1])
    assert conv.convert_prompts([image_prompt()], False, context()).object_ids == [4]
    conv.ids.clear()
    assert conv.convert_prompts([image_prompt()], False, context()).object_ids == [1]
    # Ids wrap below 65536 and skip tracked ones.
    reg = ObjectIdRegistry(10)
    reg._next = 65535
    ids, _ = reg.reserve([1, 0, 0])
    assert ids == [1, 65535, 2]
    with pytest.raises(ValueError):
        ObjectIdRegistry(0)


def test_a_refused_batch_gives_its_ids_back_so_the_first_object_is_1():
    """The node cancels the new ids of a batch the tracker refuses (e.g. the click's frame is not
    buffered yet): the retry gets id 1, not 2 (the KITTI run of issue 22 showed 2, 3, 4)."""
    reg = ObjectIdRegistry(10)
    ids, new = reg.reserve([0])
    assert ids == new == [1]
    reg.cancel(new)
    assert reg.tracked() == frozenset()
    assert reg.reserve([0])[0] == [1] and reg.reserve([0, 0])[0] == [2, 3]
    # Only the last batch rolls back; an older one is just forgotten (ids keep growing).
    a, _ = reg.reserve([0])
    b, _ = reg.reserve([0])
    reg.cancel(a)
    assert reg.reserve([0])[0] == [6] and a == [4] and b == [5]
    # A removed (released) object's id is not reused at once.
    reg.release([6])
    assert reg.reserve([0])[0] == [7]


def test_request_limits():
    conv = converter(max_prompts_per_request=2)
    with pytest.raises(PromptError, match="the request has 3 prompts; at most 2 per request"):
        conv.convert_prompts([image_prompt()] * 3, False, context())


def test_clicks_on_distorted_cameras_are_mapped_into_the_rectified_image():
    k = np.array([[300.0, 0, 320.0], [0, 300.0, 240.0], [0, 0, 1]])
    d = np.array([-0.3, 0.08, 0.0, 0.0, 0.0])
    model = camera_model_from_values(640, 480, k, d, "plumb_bob", np.eye(3), np.c_[k, np.zeros(3)])
    geometry = CameraGeometry.from_model("front", model)
    assert geometry == CameraGeometry("front", 640, 480, rectify=model)
    assert CameraGeometry.from_model("front", model, rectified=True).rectify is None
    ctx = context(cameras={"front": geometry})
    conv = converter()
    raw = np.array([[320.0, 240.0], [500.0, 350.0]])
    msg = image_prompt(points=raw, labels=(1, 1), has_box=True, box=[400.0, 300.0, 520.0, 400.0])
    (p,) = conv.convert_prompts([msg], False, ctx).prompts
    expected = cv2.undistortPoints(raw.reshape(-1, 1, 2), k, d, P=k).reshape(-1, 2)
    np.testing.assert_allclose(p.image[0].points, expected, atol=1e-6)
    assert p.image[0].points[0] == pytest.approx([320.0, 240.0])  # the centre does not move
    assert p.image[0].points[1, 0] > 510.0  # barrel distortion had pulled it inwards
    box = p.image[0].box
    assert box[0] > 400.0 and box[2] > 520.0 and box[2] <= 640.0
    # A raw corner pixel lands outside the rectified image (P = K crops the periphery).
    with pytest.raises(PromptError, match=r"point 0 \(600, 400\) lies outside the undistorted"):
        conv.convert_prompts([image_prompt(points=((600, 400),))], False, ctx)
    # Masks are remapped like the image.
    mask = np.zeros((480, 640), bool)
    mask[200:280, 280:360] = True
    msg = image_prompt(points=(), labels=(), mask=mask_msg(mask))
    (pm,) = conv.convert_prompts([msg], False, ctx).prompts
    rect = model.undistort(mask.astype(np.uint8), interpolation=cv2.INTER_NEAREST) != 0
    np.testing.assert_array_equal(pm.image[0].mask, rect)


def test_remove_object_validation():
    req = RemoveObject.Request(object_ids=[3, 1, 3])
    assert validate_remove(req.object_ids, {1, 2, 3}) == [1, 3]
    with pytest.raises(
        PromptError, match=r"object\(s\) \[7, 9\] are not tracked \(tracked: \[1, 2"
    ):
        validate_remove([1, 7, 9], {1, 2})
    with pytest.raises(PromptError, match="object_ids is empty"):
        validate_remove([], {1})
    with pytest.raises(PromptError, match="id 0 is the background"):
        validate_remove([0], {1})
