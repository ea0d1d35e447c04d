"""sam4d_node end to end over real DDS, the node in its own process (test/ros_processes/
sam4d_node_process.py) with a tiny random-weight checkpoint: outputs per processed sweep with the
input stamps and frame ids, label images and labeled cloud equal to an in-process tracker run on
the same frames and prompts, clicked points in another TF frame, a prompt on a frame 0.5 s old,
topic prompts and image clicks, remove / reset, invalid prompts, outputs nobody subscribes to,
and a clean shutdown on SIGINT.

One node serves the module (start-up costs seconds); each test resets it and uses stamps of its
own (the recording shifted forward in time), so the tests do not depend on each other.
"""

from __future__ import annotations

import itertools
import math
import time

import numpy as np
import pytest
from node_harness import (
    CAMERAS,
    NODE,
    Harness,
    NodeProcess,
    Reference,
    assert_outputs_match,
    cloud_fields,
    describe_status,
    image_array,
    image_prompt,
    level,
    lidar_prompt,
    load_recording,
    make_parameters,
    make_tiny_checkpoint,
    transform_stamped,
    values,
    write_params_file,
    yaw_transform,
)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

_NS = 1_000_000_000
# map -> odom, a frame the recording does not have: clicks in it must go through TF.
MAP_FROM_ODOM = yaw_transform(math.radians(30.0), (100.0, -50.0, 1.5))
# Each test shifts the recording by its own offset (forward only: no time jump between tests).
_OFFSETS = itertools.count(1)


def next_offset() -> int:
    return next(_OFFSETS) * 100 * _NS


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    import rclpy
    from rclpy.context import Context

    tmp = tmp_path_factory.mktemp("sam4d_node")
    ckpt = make_tiny_checkpoint(tmp / "tiny.pt")
    params = make_parameters(ckpt)
    params_file = write_params_file(tmp / "params.yaml", params)
    proc = NodeProcess("--ros-args", "--params-file", str(params_file))
    context = Context()
    rclpy.init(context=context)
    rec = load_recording(10)
    extra = [transform_stamped("map", "odom", MAP_FROM_ODOM)]
    # Not subscribed on purpose: front_left's overlay and the markers (never computed).
    outputs = ["objects", "points_labeled", "front/labels", "front/overlay", "front_left/labels",
               "debug/processing_time_ms", "debug/pipeline_latency_ms"]  # fmt: skip
    h = Harness(context, outputs=outputs, extra_static=extra)
    try:
        h.wait_connected(timeout_s=60.0)
    except AssertionError:
        print(proc.stop())
        raise
    h.publish_static(rec.static_tf)
    # CameraInfo first: the node pairs an image with the newest CameraInfo it has, and DDS does
    # not order messages across topics.
    h.publish_sweep(rec.sweeps[0], tf=False, cloud=False)
    h.spin_for(0.5)
    yield {"h": h, "proc": proc, "params": params, "rec": rec, "extra": extra}
    h.destroy()
    # pytest shows this only when something failed: the node's own account.
    print("---- sam4d_node output (tail) ----\n" + proc.stop()[-8000:])
    rclpy.try_shutdown(context=context)


def fresh(setup) -> tuple[Harness, Reference, list]:
    """Reset the node; a new reference; the recording shifted to stamps of this test's own."""
    h: Harness = setup["h"]
    r = h.reset()
    assert r.success, r.message
    offset = next_offset()
    sweeps = [s.shifted(offset) for s in setup["rec"].sweeps]
    ref = Reference(setup["params"], setup["rec"].static_tf, setup["extra"])
    return h, ref, sweeps


def image_stamps(sweep) -> dict[str, int]:
    from sam4d_ros.conversions.stamps import stamp_to_ns

    return {c: stamp_to_ns(m.header.stamp) for c, m in sweep.images.items()}


def wait_objects(h: Harness, stamp_ns: int, n: int, timeout_s: float = 10.0) -> None:
    """Until the newest ~/objects of that sweep lists ``n`` objects (after a prompt the node
    republishes the sweep's outputs)."""

    def ok() -> bool:
        objs = h.latest_objects(stamp_ns)
        return objs is not None and len(objs.objects) == n

    assert h.spin_until(ok, timeout_s), h.describe()
    # The other outputs of that publication follow (DDS does not order across topics).
    n_pub = len(h.outputs_at("objects", stamp_ns))
    assert h.spin_until(
        lambda: all(len(h.outputs_at(t, stamp_ns)) >= n_pub for t in h._stamped_topics()), 5.0
    ), h.describe()


def a_lidar_point(ref: Reference, ahead_m: float = 12.0) -> np.ndarray:
    """A point of the current sweep about ``ahead_m`` in front of the LiDAR (on something)."""
    pts = ref.built.frame.points[:, :3].astype(np.float64)
    d = np.linalg.norm(pts[:, :2] - [ahead_m, 0.0], axis=1)
    return pts[int(np.argmin(d))]


# ------------------------------------------------------------------------------ tests


def test_outputs_for_every_sweep_match_the_tracker(setup):
    h, ref, sweeps = fresh(setup)
    from sam4d_core.tracking.records import ImagePrompt, LidarPrompt, ObjectPrompt
    from sam4d_ros.conversions.stamps import stamp_to_ns

    for k, sweep in enumerate(sweeps[:4]):
        objs = h.feed(sweep)
        ref.step(sweep)
        if k == 1:
            # Two objects: a LiDAR box + click, and an image click with a background click.
            p = a_lidar_point(ref)
            box = [p[0] - 1.0, p[1] - 1.0, p[0] + 1.0, p[1] + 1.0]
            resp = h.add_prompts(
                [
                    lidar_prompt([p], box=box),
                    image_prompt("front", [[240.0, 150.0], [30.0, 20.0]], labels=[1, 0]),
                ]  # fmt: skip
            )
            assert resp.success, resp.message
            assert list(resp.object_ids) == [1, 2]
            ref.add_prompts(
                [
                    ObjectPrompt(
                        1,
                        lidar=LidarPrompt(points=p[None], labels=np.array([1]), box=np.array(box)),
                    ),  # fmt: skip
                    ObjectPrompt(
                        2,
                        image=[
                            ImagePrompt(
                                "front", np.array([[240.0, 150.0], [30.0, 20.0]]), np.array([1, 0])
                            )
                        ],
                    ),  # fmt: skip
                ]
            )
            # The node republished the sweep's outputs with the new objects.
            wait_objects(h, sweep.stamp_ns, 2)
            assert_outputs_match(h, ref, sweep.stamp_ns, image_stamps(sweep))
            continue
        assert_outputs_match(h, ref, sweep.stamp_ns, image_stamps(sweep))
        # Headers copied from the inputs.
        assert objs.header.frame_id == sweep.cloud.header.frame_id == "lidar"
        assert stamp_to_ns(objs.header.stamp) == sweep.stamp_ns
        assert list(objs.cameras_used) == list(CAMERAS)
        cloud = h.outputs_at("points_labeled", sweep.stamp_ns)[-1]
        assert cloud.header.frame_id == "lidar"
        assert cloud.width * cloud.height == sweep.cloud.width * sweep.cloud.height
        names = [f.name for f in cloud.fields]
        assert names[:5] == [f.name for f in sweep.cloud.fields]
        assert names[-2:] == ["label", "score"]
        for cam in ("front", "front_left"):
            img = h.outputs_at(f"{cam}/labels", sweep.stamp_ns)[-1]
            assert img.header.frame_id == sweep.images[cam].header.frame_id
            assert img.header.frame_id == f"{cam}_optical_frame"
            assert (img.width, img.height, img.encoding) == (480, 288, "mono16")
        overlay = h.outputs_at("front/overlay", sweep.stamp_ns)[-1]
        assert overlay.encoding == "rgb8" and overlay.header.frame_id == "front_optical_frame"
    # With objects, the outputs are not trivial (random weights still give some pixels/points).
    out = ref.outputs()
    assert any(out.label_image(c).any() for c in CAMERAS)
    fields = cloud_fields(h.outputs_at("points_labeled", sweeps[3].stamp_ns)[-1])
    assert set(np.unique(fields["label"])) <= {0, 1, 2}
    assert ((fields["score"] >= 0) & (fields["score"] <= 1)).all()
    # Debug topics: one value per processed sweep.
    debug = h.received[f"{NODE}/debug/processing_time_ms"]
    assert h.spin_until(lambda: len(debug) >= 4, 5.0), len(debug)
    assert len(h.received[f"{NODE}/debug/pipeline_latency_ms"]) >= 3
    assert all(m.data > 0 for m in debug)


def test_outputs_nobody_subscribes_to_are_not_computed(setup):
    h, _ref, sweeps = fresh(setup)
    for sweep in sweeps[:2]:
        h.feed(sweep)
    st = h.wait_status("processing", lambda s: True)
    v = values(st)
    assert int(v[f"published.{NODE}/front/overlay"]) >= 2
    assert int(v[f"published.{NODE}/objects"]) >= 2
    # Never subscribed by anyone: never built.
    assert f"published.{NODE}/front_left/overlay" not in v, v
    assert f"published.{NODE}/markers" not in v, v


def test_clicked_point_in_another_frame_lands_on_the_same_object(setup):
    h, ref, sweeps = fresh(setup)
    from geometry_msgs.msg import PointStamped

    from sam4d_core.tracking.records import LidarPrompt, ObjectPrompt
    from sam4d_ros.conversions.stamps import make_header

    for sweep in sweeps[:3]:
        h.feed(sweep)
        ref.step(sweep)
    p_lidar = a_lidar_point(ref, 9.0)
    t = sweeps[2].stamp_ns
    # The same point in 'map' (through odom and the ego pose at the sweep's stamp).
    map_from_lidar = np.linalg.inv(ref.lidar_from("map", t))
    p_map = map_from_lidar[:3, :3] @ p_lidar + map_from_lidar[:3, 3]
    assert np.linalg.norm(p_map - p_lidar) > 50.0  # really another frame
    click = PointStamped()
    # RViz stamps clicks with "now": later than the newest sweep means that sweep.
    click.header = make_header(t + 5 * _NS, "map")
    click.point.x, click.point.y, click.point.z = (float(v) for v in p_map)
    h.pub_clicked.publish(click)
    wait_objects(h, t, 1)
    # The same click given in the LiDAR frame through the service: object 2.
    resp = h.add_prompts([lidar_prompt([p_lidar])])
    assert resp.success and list(resp.object_ids) == [2], resp.message
    wait_objects(h, t, 2)
    objs = {o.id: o for o in h.latest_objects(t).objects}
    assert objs[1].presence_score == pytest.approx(objs[2].presence_score, abs=1e-4)
    assert objs[1].predicted_iou == pytest.approx(objs[2].predicted_iou, abs=1e-4)
    # And both equal the in-process tracker given the LiDAR-frame click.
    ref.add_prompts([ObjectPrompt(1, lidar=LidarPrompt(p_lidar[None], np.array([1])))])
    ref.add_prompts([ObjectPrompt(2, lidar=LidarPrompt(p_lidar[None], np.array([1])))])
    assert_outputs_match(h, ref, t, image_stamps(sweeps[2]))
    # Tracked on: the next sweep still matches.
    h.feed(sweeps[3])
    ref.step(sweeps[3])
    assert_outputs_match(h, ref, sweeps[3].stamp_ns, image_stamps(sweeps[3]))


def test_prompt_on_a_frame_half_a_second_old_is_honoured(setup):
    h, ref, sweeps = fresh(setup)
    from sam4d_core.tracking.records import ImagePrompt, ObjectPrompt

    for sweep in sweeps[:7]:
        h.feed(sweep)
        ref.step(sweep)
    old = sweeps[1]  # 0.5 s before the newest (sweeps[6])
    old_stamp = image_stamps(old)["front"]
    assert sweeps[6].stamp_ns - old_stamp == pytest.approx(0.5 * _NS, abs=1e3)
    pixel = np.array([[300.0, 160.0]])
    resp = h.add_prompts([image_prompt("front", pixel, stamp_ns=old_stamp)])
    assert resp.success, resp.message
    assert "0.500 s old" in resp.message, resp.message
    ref.add_prompts(
        [ObjectPrompt(1, stamp=old_stamp / _NS, image=[ImagePrompt("front", pixel, np.array([1]))])]
    )
    t = sweeps[6].stamp_ns
    wait_objects(h, t, 1)
    assert_outputs_match(h, ref, t, image_stamps(sweeps[6]))
    # The stamp mattered: the same click applied on the newest sweep gives other results.
    naive = Reference(setup["params"], setup["rec"].static_tf, setup["extra"])
    for sweep in sweeps[:7]:
        naive.step(sweep)
    naive.add_prompts([ObjectPrompt(1, image=[ImagePrompt("front", pixel, np.array([1]))])])
    got = h.latest_objects(t).objects[0]
    naive_obj = naive.result.objects[0]
    assert got.presence_score != pytest.approx(naive_obj.presence_score, abs=1e-4) or not (
        np.array_equal(
            image_array(h.outputs_at("front/labels", t)[-1]), naive.outputs().label_image("front")
        )
    )
    for sweep in sweeps[7:9]:
        h.feed(sweep)
        ref.step(sweep)
        assert_outputs_match(h, ref, sweep.stamp_ns, image_stamps(sweep))


def test_topic_prompts_and_image_clicks(setup):
    h, ref, sweeps = fresh(setup)
    from geometry_msgs.msg import Point

    from sam4d_core.tracking.records import ImagePrompt, LidarPrompt, ObjectPrompt

    for sweep in sweeps[:2]:
        h.feed(sweep)
        ref.step(sweep)
    t = sweeps[1].stamp_ns
    p = a_lidar_point(ref, 15.0)
    h.pub_prompt.publish(lidar_prompt([p]))  # fire and forget
    wait_objects(h, t, 1)
    ref.add_prompts([ObjectPrompt(1, lidar=LidarPrompt(p[None], np.array([1])))])
    # rqt_image_view's click on the front camera (the image shown is this sweep's).
    h.pub_click["front"].publish(Point(x=200.0, y=170.0, z=0.0))
    wait_objects(h, t, 2)
    ref.add_prompts(
        [ObjectPrompt(2, stamp=t / _NS,
                      image=[ImagePrompt("front", np.array([[200.0, 170.0]]), np.array([1]))])]
    )  # fmt: skip
    assert_outputs_match(h, ref, t, image_stamps(sweeps[1]))
    # A click outside the image changes nothing (and is reported in the log / diagnostics).
    h.pub_click["front"].publish(Point(x=900.0, y=10.0, z=0.0))
    st = h.wait_status("prompts", lambda s: "outside" in values(s)["last_error"])
    assert "900" in values(st)["last_error"]
    h.feed(sweeps[2])
    ref.step(sweeps[2])
    assert_outputs_match(h, ref, sweeps[2].stamp_ns, image_stamps(sweeps[2]))


def test_remove_and_reset(setup):
    h, ref, sweeps = fresh(setup)
    from sam4d_core.tracking.records import LidarPrompt, ObjectPrompt

    for sweep in sweeps[:2]:
        h.feed(sweep)
        ref.step(sweep)
    p1, p2 = a_lidar_point(ref, 8.0), a_lidar_point(ref, 20.0)
    resp = h.add_prompts([lidar_prompt([p1]), lidar_prompt([p2])])
    assert resp.success and list(resp.object_ids) == [1, 2], resp.message
    ref.add_prompts([ObjectPrompt(i, lidar=LidarPrompt(p[None], np.array([1])))
                     for i, p in ((1, p1), (2, p2))])  # fmt: skip
    objs = h.feed(sweeps[2])
    ref.step(sweeps[2])
    assert sorted(o.id for o in objs.objects) == [1, 2]

    r = h.remove([1])
    assert r.success, r.message
    ref.tracker.remove_objects([1])
    objs = h.feed(sweeps[3])
    ref.step(sweeps[3])
    assert [o.id for o in objs.objects] == [2]
    assert_outputs_match(h, ref, sweeps[3].stamp_ns, image_stamps(sweeps[3]))
    r = h.remove([1])
    assert not r.success and "not tracked" in r.message and "[2]" in r.message, r.message

    r = h.reset()
    assert r.success and "1 object(s)" in r.message, r.message
    objs = h.feed(sweeps[4])
    assert objs.objects == []
    resp = h.add_prompts([lidar_prompt([p1])])
    assert resp.success and list(resp.object_ids) == [1], resp.message  # ids start over


def test_invalid_prompts_change_nothing(setup):
    h, _ref, sweeps = fresh(setup)
    for sweep in sweeps[:3]:
        h.feed(sweep)
    newest = sweeps[2].stamp_ns
    resp = h.add_prompts([lidar_prompt([[10.0, 0.0, 0.0]])])
    assert resp.success
    wait_objects(h, newest, 1)
    before = h.latest_objects(newest)

    bad_labels = lidar_prompt([[10.0, 0.0, 0.0], [11.0, 0.0, 0.0]], labels=[1])
    empty = lidar_prompt(np.zeros((0, 3)))
    cases = {
        "unknown camera 'rear'": [image_prompt("rear", [[10.0, 10.0]])],
        "outside the 480x288 image": [image_prompt("front", [[500.0, 10.0]])],
        "nothing to prompt with": [empty],
        "1 label(s) for 2 point(s)": [bad_labels],
        "is not finite": [lidar_prompt([[float("nan"), 0.0, 0.0]])],
        "frame buffer keeps only": [lidar_prompt([[10.0, 0.0, 0.0]], stamp_ns=newest - 5 * _NS)],
        "exceeds 65535": [lidar_prompt([[10.0, 0.0, 0.0]], object_id=70000)],
        "no transform from frame 'nowhere'": [lidar_prompt([[1.0, 0, 0]], frame_id="nowhere")],
        # A valid prompt next to an invalid one: all or nothing.
        "prompt 1": [lidar_prompt([[12.0, 0.0, 0.0]]), image_prompt("front", [[-5.0, 1.0]])],
    }
    for expected, prompts in cases.items():
        resp = h.add_prompts(prompts)
        assert not resp.success, expected
        assert expected in resp.message, (expected, resp.message)
        assert list(resp.object_ids) == []
    r = h.remove([7])
    assert not r.success and "not tracked" in r.message
    r = h.remove([])
    assert not r.success and "empty" in r.message
    # Nothing changed: the next sweep tracks exactly the one object, with id 1; a new prompt
    # gets id 2 (no id was consumed by the rejected requests).
    after = h.feed(sweeps[3])
    assert [o.id for o in after.objects] == [o.id for o in before.objects] == [1]
    resp = h.add_prompts([lidar_prompt([[12.0, 0.0, 0.0]])])
    assert resp.success and list(resp.object_ids) == [2]
    st = h.wait_status("prompts", lambda s: int(values(s)["failed"]) >= len(cases))
    assert level(st) == 0, describe_status(st)


def test_clean_shutdown_on_sigint(setup):
    proc: NodeProcess = setup["proc"]
    h: Harness = setup["h"]
    time.sleep(0.2)
    assert proc.proc.poll() is None, "the node died during the tests"
    out = proc.stop(timeout_s=20.0)
    assert proc.proc.returncode == 0, out
    assert "Traceback" not in out and "[ERROR]" not in out and "[FATAL]" not in out, out
    # The node is gone from the graph.
    assert h.spin_until(lambda: h.node.count_subscribers("/sensors/lidar/points") == 0, 10.0)
