"""Small hand-built sequences for the data format tests (seeded random, no scene generator).

The content is random but internally consistent in shape: points with labels (including the
ignore id -1), per camera an image and an instance mask, rigid poses and calibrations, and an
object table covering every id that appears.
"""

from __future__ import annotations

import numpy as np

from sam4d_core.data.sequence import CameraFrame, Frame, ObjectInfo, Sequence


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random (3, 3) rotation."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def random_pose(rng: np.random.Generator, scale: float = 50.0) -> np.ndarray:
    t = np.eye(4)
    t[:3, :3] = random_rotation(rng)
    t[:3, 3] = rng.uniform(-scale, scale, 3)
    return t


def make_sequence(
    seed: int = 0,
    num_frames: int = 3,
    cameras: tuple[str, ...] = ("front", "left"),
    size_hw: tuple[int, int] = (24, 32),
    num_points: int = 200,
    extra_fields: tuple[str, ...] = ("ring",),
    t0: float = 1_700_000_000.25,
    moving_calibration: bool = False,
) -> Sequence:
    """A seeded random sequence.

    Args:
        moving_calibration: give each frame its own cam_from_lidar (like nuScenes' lidar2cam).
    """
    rng = np.random.default_rng(seed)
    fields = ("x", "y", "z", "intensity", *extra_fields)
    semantics = ["car", "pedestrian", "cyclist", "pole"]
    calib = {c: random_pose(rng, 2.0) for c in cameras}
    frames = []
    for i in range(num_frames):
        t = t0 + 0.1 * i
        n = num_points + i  # different sizes per frame
        pts = rng.normal(scale=10.0, size=(n, len(fields))).astype(np.float32)
        labels = rng.choice(np.array([-1, 0, 0, 1, 2, 3], np.int32), size=n)
        cams = {}
        for j, c in enumerate(cameras):
            h, w = size_hw
            # 8x8 colour blocks plus mild noise: random at the pixel level (so lossless round
            # trips are meaningful) yet smooth enough for a JPEG round trip to stay close.
            blocks = rng.integers(0, 256, size=(h // 8 + 1, w // 8 + 1, 3))
            img = np.repeat(np.repeat(blocks, 8, axis=0), 8, axis=1)[:h, :w]
            img = np.clip(img + rng.integers(-6, 7, size=img.shape), 0, 255).astype(np.uint8)
            inst = np.zeros((h, w), np.int32)
            inst[2:10, 3:12] = 1
            inst[12:20, 5:30] = 3
            inst[rng.random((h, w)) < 0.05] = 2
            k = np.array([[30.0 + j, 0, w / 2 + 0.25], [0, 31.0, h / 2 - 0.5], [0, 0, 1]])
            cams[c] = CameraFrame(
                name=c,
                image=img,
                intrinsics=k,
                cam_from_lidar=random_pose(rng, 2.0) if moving_calibration else calib[c].copy(),
                timestamp=t - 0.01 * (j + 1),
                instance_mask=inst,
            )
        objects = {
            oid: ObjectInfo(
                object_id=oid,
                semantic=semantics[oid % len(semantics)],
                score=float(np.round(rng.random(), 3)),
                volume=None if oid == 2 else float(np.round(rng.uniform(1, 20), 2)),
            )
            for oid in (1, 2, 3)
        }
        frames.append(
            Frame(
                timestamp=t,
                points=pts,
                cameras=cams,
                world_from_lidar=random_pose(rng),
                point_labels=labels,
                objects=objects,
                index=i,
            )
        )
    return Sequence(name=f"seq_{seed}", frames=frames, point_fields=fields)


def assert_sequences_equal(
    a: Sequence,
    b: Sequence,
    *,
    images_exact: bool = True,
    pose_atol: float = 1e-9,
    time_atol: float = 1e-9,
) -> None:
    """Compare two sequences frame by frame (exact arrays, float64 tolerance for transforms)."""
    assert a.name == b.name
    assert tuple(a.point_fields) == tuple(b.point_fields)
    assert a.lidar_frame_id == b.lidar_frame_id
    assert a.world_frame_id == b.world_frame_id
    assert len(a) == len(b)
    for fa, fb in zip(a.frames, b.frames, strict=True):
        assert abs(fa.timestamp - fb.timestamp) <= time_atol
        np.testing.assert_array_equal(fa.points, fb.points)
        assert fb.points.dtype == np.float32
        np.testing.assert_allclose(fb.world_from_lidar, fa.world_from_lidar, rtol=0, atol=pose_atol)
        if fa.point_labels is None:
            assert fb.point_labels is None
        else:
            np.testing.assert_array_equal(fa.point_labels, fb.point_labels)
            assert fb.point_labels.dtype == np.int32
        assert fa.objects == fb.objects
        assert set(fa.cameras) == set(fb.cameras)
        for name, ca in fa.cameras.items():
            cb = fb.cameras[name]
            if images_exact:
                np.testing.assert_array_equal(ca.image, cb.image)
            else:
                assert ca.image.shape == cb.image.shape
                diff = np.abs(ca.image.astype(int) - cb.image.astype(int)).mean()
                assert diff < 12, f"lossy image too different (mean abs diff {diff})"
            np.testing.assert_allclose(cb.intrinsics, ca.intrinsics, rtol=0, atol=1e-12)
            np.testing.assert_allclose(cb.cam_from_lidar, ca.cam_from_lidar, rtol=0, atol=pose_atol)
            if ca.timestamp is None:
                assert cb.timestamp in (None, fa.timestamp)
            else:
                assert abs(ca.timestamp - cb.timestamp) <= time_atol
            if ca.instance_mask is None:
                assert cb.instance_mask is None
            else:
                np.testing.assert_array_equal(ca.instance_mask, cb.instance_mask)
