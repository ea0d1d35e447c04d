"""Per-sweep camera synchronization (sam4d_ros.sync) with real sensor_msgs messages: nearest image
within the tolerance, per-camera offsets, waiting for late cameras without ever dropping a sweep,
counters, backward time jumps, and concurrent producers."""

from __future__ import annotations

import threading
import time

import pytest
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2

from sam4d_ros.conversions.stamps import ns_to_time_msg
from sam4d_ros.sync import SweepSynchronizer, SyncConfig

NS = 1_000_000_000
T0 = 1_700_000_000 * NS


class FakeClock:
    """Monotonic seconds that only move when the test says so."""

    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t

    def advance(self, s: float) -> None:
        self.t += s


def cloud(stamp_ns: int) -> PointCloud2:
    msg = PointCloud2()
    msg.header.stamp = ns_to_time_msg(stamp_ns)
    msg.header.frame_id = "lidar"
    return msg


def image(stamp_ns: int, frame: str = "cam_optical") -> Image:
    msg = Image()
    msg.header.stamp = ns_to_time_msg(stamp_ns)
    msg.header.frame_id = frame
    return msg


def ms(x: float) -> int:
    return int(round(x * 1e6))


def make(cameras=("front",), clock=None, **kw) -> tuple[SweepSynchronizer, FakeClock]:
    clock = clock or FakeClock()
    return SweepSynchronizer(SyncConfig(cameras=cameras, **kw), clock=clock), clock


def test_image_before_sweep_is_matched_without_waiting():
    sync, _ = make(tolerance_s=0.05, max_wait_s=0.1)
    info = CameraInfo()
    sync.add_camera_info("front", info)
    img = image(T0 + ms(2))
    sync.add_image("front", img)
    sync.add_sweep(cloud(T0))
    out = sync.poll()  # the image is after the target: nothing nearer can come
    assert len(out) == 1
    s = out[0]
    assert s.stamp_ns == T0 and s.stamp_s == pytest.approx(T0 / NS)
    assert s.cameras["front"].image is img and s.cameras["front"].info is info
    assert s.cameras["front"].delta_ns == ms(2)
    assert s.missing == {} and not s.time_jump and s.waited_s == 0.0
    c = sync.counters()
    assert c.cameras["front"].matched == 1 and c.cameras["front"].missing == 0
    assert c.sweeps_received == c.sweeps_emitted == 1 and c.pending == 0


def test_nearest_image_is_chosen_and_offsets_shift_the_target():
    sync, _ = make(cameras=("a", "b"), tolerance_s=0.05, time_offsets_s={"b": 0.03})
    for name in ("a", "b"):
        for off in (-40, -10, 20, 60):
            sync.add_image(name, image(T0 + ms(off)))
    sync.add_sweep(cloud(T0))
    (s,) = sync.poll()
    assert s.cameras["a"].stamp_ns == T0 + ms(-10)
    assert s.cameras["b"].stamp_ns == T0 + ms(20)  # nearest to sweep + 30 ms
    assert s.cameras["b"].delta_ns == ms(-10)


def test_late_image_within_max_wait_joins_its_sweep():
    sync, clock = make(tolerance_s=0.05, max_wait_s=0.1)
    sync.add_sweep(cloud(T0))
    assert sync.poll() == []  # nothing yet: the camera may still deliver
    clock.advance(0.03)
    assert sync.poll() == []
    img = CompressedImage()
    img.header.stamp = ns_to_time_msg(T0 + ms(5))
    sync.add_image("front", img)
    (s,) = sync.poll()
    assert s.cameras["front"].image is img
    assert s.waited_s == pytest.approx(0.03)


def test_sweep_is_never_dropped_for_a_missing_camera():
    sync, clock = make(cameras=("front", "left"), tolerance_s=0.05, max_wait_s=0.1)
    sync.add_image("front", image(T0))
    sync.add_sweep(cloud(T0))
    assert sync.poll() == []  # waits for 'left'
    clock.advance(0.1)
    (s,) = sync.poll()
    assert list(s.cameras) == ["front"]
    assert "no image received" in s.missing["left"]
    c = sync.counters().cameras["left"]
    assert (c.matched, c.missing, c.no_image) == (0, 1, 1)
    # The late image arrives after its sweep left: counted as late, not matched.
    sync.add_image("left", image(T0 + ms(1)))
    assert sync.counters().cameras["left"].late == 1


def test_too_old_and_too_new_are_told_apart():
    sync, clock = make(cameras=("old", "new"), tolerance_s=0.02, max_wait_s=0.05)
    sync.add_image("old", image(T0 - ms(80)))
    sync.add_image("new", image(T0 + ms(70)))
    sync.add_sweep(cloud(T0))
    assert sync.poll() == []  # 'old' may still send a nearer image
    clock.advance(0.05)
    (s,) = sync.poll()
    assert s.cameras == {}
    assert "older than the sweep" in s.missing["old"] and "0.080 s" in s.missing["old"]
    assert "+0.070 s" in s.missing["new"]
    c = sync.counters().cameras
    assert (c["old"].too_old, c["old"].too_new, c["new"].too_new) == (1, 0, 1)


def test_camera_period_lets_a_sweep_leave_early():
    sync, _ = make(tolerance_s=0.05, max_wait_s=1.0)
    for k in range(3):  # 10 Hz camera
        sync.add_image("front", image(T0 + k * ms(100)))
    # The next frame (~T0 + 300 ms) would be farther from T0 + 210 ms than the one at + 200 ms.
    sync.add_sweep(cloud(T0 + ms(210)))
    (s,) = sync.poll()
    assert s.cameras["front"].stamp_ns == T0 + ms(200)
    # Between two frames, beyond the tolerance of both: decided (missing) without waiting too.
    sync2, _ = make(tolerance_s=0.02, max_wait_s=1.0)
    for k in range(3):
        sync2.add_image("front", image(T0 + k * ms(100)))
    sync2.add_sweep(cloud(T0 + ms(250)))
    (s2,) = sync2.poll()
    assert s2.cameras == {} and sync2.counters().cameras["front"].too_old == 1


def test_a_forward_jump_of_the_camera_clock_is_not_its_period():
    # A pause (or a bag that skips ahead) leaves one huge gap among the buffered stamps: the
    # camera's period is still ~100 ms, so the next sweep waits for its image.
    sync, clock = make(tolerance_s=0.05, max_wait_s=0.3)
    sync.add_image("front", image(T0))
    later = T0 + 100 * NS
    sync.add_image("front", image(later))
    sync.add_image("front", image(later + ms(100)))
    sync.add_sweep(cloud(later + ms(200)))
    assert sync.poll() == []  # undecided: its image is due
    sync.add_image("front", image(later + ms(200)))
    (s,) = sync.poll()
    assert s.cameras["front"].stamp_ns == later + ms(200)


def test_sweeps_leave_in_arrival_order():
    sync, clock = make(tolerance_s=0.05, max_wait_s=0.1)
    sync.add_sweep(cloud(T0))
    clock.advance(0.05)
    sync.add_sweep(cloud(T0 + ms(100)))
    sync.add_image("front", image(T0 + ms(100)))  # decides both sweeps (and matches the second)
    out = sync.poll()
    assert [s.stamp_ns for s in out] == [T0, T0 + ms(100)]
    assert out[0].cameras == {} and out[1].cameras["front"].stamp_ns == T0 + ms(100)


def test_newest_only_counts_superseded_and_carries_the_time_jump():
    sync, _ = make(cameras=(), time_jump_threshold_s=1.0)
    sync.add_sweep(cloud(T0 + 10 * NS))
    assert sync.add_sweep(cloud(T0)) is True  # time jumped back 10 s
    sync.add_sweep(cloud(T0 + ms(100)))
    (s,) = sync.poll(newest_only=True)
    assert s.stamp_ns == T0 + ms(100)
    assert s.time_jump and s.jump_s == pytest.approx(10.0)
    c = sync.counters()
    assert c.superseded == 2 and c.time_jumps == 1 and c.sweeps_emitted == 3


def test_time_jump_flushes_the_old_timeline_and_keeps_the_new_one():
    sync, clock = make(cameras=("front", "left"), tolerance_s=0.05, max_wait_s=0.1)
    sync.add_image("front", image(T0 + 5 * NS))
    sync.add_image("left", image(T0 + 5 * NS))
    sync.add_sweep(cloud(T0 + 5 * NS))
    sync.add_image("left", image(T0 + 6 * NS - ms(100)))
    sync.add_sweep(cloud(T0 + 6 * NS))  # pending: no image near it yet
    assert [s.stamp_ns for s in sync.poll()] == [T0 + 5 * NS]
    # The bag loops: the first image of the new loop arrives just before its sweep.
    first = image(T0)
    sync.add_image("front", first)
    assert sync.add_sweep(cloud(T0)) is True
    out = sync.poll()
    # The pending sweep of the old timeline left first (not dropped), then the flagged one.
    assert [s.stamp_ns for s in out] == [T0 + 6 * NS]
    assert not out[0].time_jump
    clock.advance(0.1)
    (s,) = sync.poll()
    assert s.time_jump and s.jump_s == pytest.approx(6.0)
    assert s.cameras["front"].image is first  # images of the new timeline are kept
    assert "left" in s.missing  # the old 'left' images were dropped
    assert sync.latest_image_stamp_ns("left") is None


def test_camera_clock_jumping_back_clears_its_buffer():
    sync, _ = make(time_jump_threshold_s=1.0)
    sync.add_image("front", image(T0 + 10 * NS))
    sync.add_image("front", image(T0))
    assert sync.latest_image_stamp_ns("front") == T0
    assert sync.counters().cameras["front"].time_jumps == 1


def test_buffer_size_bounds_each_camera_and_same_stamp_replaces():
    sync, _ = make(buffer_size=3)
    for k in range(10):
        sync.add_image("front", image(T0 + k * ms(10)))
    replacement = image(T0 + 9 * ms(10))
    sync.add_image("front", replacement)
    sync.add_sweep(cloud(T0 + 9 * ms(10)))
    (s,) = sync.poll()
    assert s.cameras["front"].image is replacement
    sync.add_sweep(cloud(T0))  # its image was pushed out of the 3-image buffer
    assert sync.flush()[0].cameras == {}


def test_max_pending_sweeps_releases_the_oldest_instead_of_dropping():
    sync, _ = make(max_wait_s=10.0, max_pending_sweeps=2)
    for k in range(4):
        sync.add_sweep(cloud(T0 + k * ms(100)))
    assert [s.stamp_ns for s in sync.poll()] == [T0, T0 + ms(100)]
    assert sync.counters().pending == 2
    assert len(sync.flush()) == 2 and sync.counters().sweeps_emitted == 4


def test_update_and_reset():
    sync, clock = make(tolerance_s=0.01, max_wait_s=0.0)
    sync.add_image("front", image(T0 + ms(30)))
    sync.add_sweep(cloud(T0))
    assert sync.poll()[0].cameras == {}
    sync.update(tolerance_s=0.05, time_offsets_s={"front": 0.0})
    sync.add_sweep(cloud(T0 + ms(1)))
    assert sync.poll()[0].cameras["front"].stamp_ns == T0 + ms(30)
    with pytest.raises(ValueError, match="tolerance_s must be finite and >= 0"):
        sync.update(tolerance_s=-1.0)
    assert sync.config.tolerance_s == 0.05  # unchanged after a refused update
    sync.add_camera_info("front", CameraInfo())
    sync.reset()
    assert sync.latest_image_stamp_ns("front") is None and sync.latest_camera_info("front") is None
    sync.reset_counters()
    assert sync.counters().cameras["front"].received == 0


def test_bad_configuration_and_unknown_camera_are_reported():
    with pytest.raises(ValueError, match="unique"):
        SyncConfig(cameras=("a", "a"))
    with pytest.raises(ValueError, match=r"unknown cameras \['x'\]"):
        SyncConfig(cameras=("a",), time_offsets_s={"x": 0.1})
    with pytest.raises(ValueError, match="buffer_size must be >= 1"):
        SyncConfig(buffer_size=0)
    sync, _ = make()
    with pytest.raises(KeyError, match="unknown camera 'rear'"):
        sync.add_image("rear", image(T0))


def test_wait_ready_wakes_up_at_the_deadline_with_the_real_clock():
    sync = SweepSynchronizer(SyncConfig(cameras=("front",), max_wait_s=0.05))
    t = time.monotonic()
    assert sync.wait_ready(timeout_s=0.02) == []
    assert time.monotonic() - t >= 0.015
    sync.add_sweep(cloud(T0))
    t = time.monotonic()
    (s,) = sync.wait_ready(timeout_s=2.0)
    assert 0.03 <= time.monotonic() - t < 1.0  # released by its deadline, not the timeout
    assert "front" in s.missing


def test_concurrent_producers_and_a_worker_lose_no_sweep():
    cams = ("front", "left", "right")
    sync = SweepSynchronizer(SyncConfig(cameras=cams, tolerance_s=0.02, max_wait_s=0.02))
    n = 60
    got: list = []
    done = threading.Event()

    def camera(name: str, skip: int) -> None:
        for k in range(n):
            if k % skip:
                sync.add_image(name, image(T0 + k * ms(50)))
            time.sleep(0.0005)

    def lidar() -> None:
        for k in range(n):
            sync.add_sweep(cloud(T0 + k * ms(50)))
            time.sleep(0.001)
        done.set()

    def worker() -> None:
        while not (done.is_set() and sync.counters().pending == 0):
            got.extend(sync.wait_ready(timeout_s=0.05))
        got.extend(sync.flush())

    threads = [
        threading.Thread(target=camera, args=(c, s))
        for c, s in zip(cams, (5, 7, 1000), strict=True)
    ]
    threads += [threading.Thread(target=lidar), threading.Thread(target=worker)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=20)
    assert [s.stamp_ns for s in got] == [T0 + k * ms(50) for k in range(n)]
    c = sync.counters()
    assert c.sweeps_emitted == n
    for name in cams:
        cc = c.cameras[name]
        assert cc.matched + cc.missing == n
        assert cc.missing == cc.no_image + cc.too_old + cc.too_new
    for s in got:  # a matched image is always within tolerance of its sweep
        for m in s.cameras.values():
            assert abs(m.stamp_ns - s.stamp_ns) <= ms(20)
