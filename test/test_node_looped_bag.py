"""A looped bag: the bundled recording played in a loop (BagPlayer, at twice its speed, with
/clock for use_sim_time). When it starts over, time jumps back 3.9 s: the node resets the tracker,
clears the dynamic TF, reports "time jumped back ...: tracker reset" on /diagnostics and goes on
tracking on the new timeline. A module of its own: no other sam4d_node may run meanwhile."""

from __future__ import annotations

import numpy as np
import pytest
from node_harness import (
    BAG,
    CAMERAS,
    LIDAR_TOPIC,
    describe_status,
    level,
    make_parameters,
    make_tiny_checkpoint,
    start_node,
    stop_node,
    values,
)

WARN = 1

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def test_looped_bag_resets_the_tracker_and_says_so(tmp_path):
    """The bundled recording played in a loop at twice its speed with /clock (use_sim_time):
    when it starts over, time jumps back 3.9 s; the node resets the tracker, clears the dynamic
    TF, reports it on /diagnostics and goes on tracking on the new timeline."""
    from geometry_msgs.msg import PointStamped

    from sam4d_ros.conversions.stamps import make_header, stamp_to_ns
    from sam4d_ros.tools.play import BagPlayer

    ckpt = make_tiny_checkpoint(tmp_path / "tiny.pt")
    params = make_parameters(ckpt, **{"qos.sensor_reliability": "best_effort"})
    params["use_sim_time"] = True
    # The checkpoint from the command line (the main job's --checkpoint), not the file.
    del params["model.checkpoint"]
    proc, context, h = start_node(tmp_path, params, ["objects"], "--checkpoint", str(ckpt))
    topics = [LIDAR_TOPIC, "/tf", "/tf_static"] + [
        t for c in CAMERAS
        for t in (f"/sensors/camera/{c}/image_raw/compressed", f"/sensors/camera/{c}/camera_info")
    ]  # fmt: skip
    passes: list[int] = []
    player = BagPlayer(BAG, context=context, rate=2.0, loop=True, topics=topics, clock_hz=50.0,
                       on_loop=passes.append, log=None)  # fmt: skip
    try:
        player.start()
        # First pass: tracking, and an object from a click.
        assert h.spin_until(lambda: len(h.received["/sam4d_node/objects"]) >= 3, 20.0)
        h.pub_clicked.publish(PointStamped(header=make_header(0, "lidar")))
        assert h.spin_until(
            lambda: any(m.objects for m in h.received["/sam4d_node/objects"]), 10.0
        ), h.describe()
        # The loop: time jumps back, the node says so.
        st = h.wait_status(
            "tracker", lambda s: "time jumped back" in s.message and "tracker reset" in s.message,
            timeout_s=30.0,
        )  # fmt: skip
        assert level(st) == WARN and int(values(st)["time_jumps"]) >= 1, describe_status(st)
        assert passes, "the player did not loop"
        # Tracking goes on on the new timeline, from a clean state, with poses from TF.
        msgs = h.received["/sam4d_node/objects"]

        def jump_index() -> int | None:
            # The loop's jump (the bag is 3.9 s long), not a sweep delivered a little out of
            # order (best-effort DDS under load may deliver one 0.1 s old after a newer one).
            stamps = [stamp_to_ns(m.header.stamp) for m in msgs]
            return next(
                (i for i in range(1, len(stamps)) if stamps[i] < stamps[i - 1] - 1_000_000_000),
                None,
            )

        assert h.spin_until(lambda: jump_index() is not None, 10.0), h.describe()
        jump_at = jump_index()
        assert h.spin_until(lambda: len(msgs) >= jump_at + 3, 20.0), h.describe()
        after = msgs[jump_at:]
        assert all(not m.objects for m in after), "objects survived the reset"
        assert np.all(np.diff([stamp_to_ns(m.header.stamp) for m in after[:3]]) > 0)
        h.wait_status("lidar", lambda s: level(s) == 0 and values(s)["pose_source"] == "tf")
        assert proc.proc.poll() is None, proc.output[-5000:]
    finally:
        player.stop()
        player.close()
        stop_node(proc, context, h)
