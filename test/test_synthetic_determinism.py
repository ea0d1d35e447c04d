"""The synthetic generator is a pure function of its configuration and seed."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from sam4d_core.data.sequence import Sequence
from sam4d_core.data.synthetic import SyntheticGenerator, generate_sequence, make_config

REPO = Path(__file__).resolve().parents[1]

_HASH_SNIPPET = """
import hashlib, sys
from sam4d_core.data.synthetic import SyntheticGenerator, make_config
g = SyntheticGenerator(make_config("tiny", num_frames=2))
h = hashlib.sha256()
for i in range(2):
    f = g.render(i).frame
    for a in (f.points, f.point_labels, f.world_from_lidar):
        h.update(a.tobytes())
    for c in f.cameras.values():
        h.update(c.image.tobytes()); h.update(c.instance_mask.tobytes())
print(h.hexdigest())
"""


def _digest(seq_frames) -> str:
    h = hashlib.sha256()
    for f in seq_frames:
        for a in (f.points, f.point_labels, f.world_from_lidar):
            h.update(a.tobytes())
        for c in f.cameras.values():
            h.update(c.image.tobytes())
            h.update(c.instance_mask.tobytes())
    return h.hexdigest()


def _assert_frames_identical(a, b) -> None:
    assert a.timestamp == b.timestamp
    for x, y in (
        (a.points, b.points),
        (a.point_labels, b.point_labels),
        (a.world_from_lidar, b.world_from_lidar),
    ):
        assert x.dtype == y.dtype and np.array_equal(x, y)
    assert a.cameras.keys() == b.cameras.keys()
    for name in a.cameras:
        ca, cb = a.cameras[name], b.cameras[name]
        for x, y in (
            (ca.image, cb.image),
            (ca.instance_mask, cb.instance_mask),
            (ca.intrinsics, cb.intrinsics),
            (ca.cam_from_lidar, cb.cam_from_lidar),
        ):
            assert x.dtype == y.dtype and np.array_equal(x, y)
    assert a.objects == b.objects


def test_same_seed_gives_bit_identical_sequences():
    cfg = make_config("tiny")
    a = generate_sequence(cfg)
    b = generate_sequence(make_config("tiny"))
    assert isinstance(a, Sequence) and len(a) == cfg.num_frames
    assert a.point_fields == b.point_fields == ("x", "y", "z", "intensity", "ring")
    for fa, fb in zip(a.frames, b.frames, strict=True):
        _assert_frames_identical(fa, fb)


def test_different_seeds_give_different_sequences():
    a = SyntheticGenerator(make_config("tiny", num_frames=1)).render(0).frame
    b = SyntheticGenerator(make_config("tiny", num_frames=1, seed=1)).render(0).frame
    assert not np.array_equal(a.world_from_lidar, b.world_from_lidar)
    assert a.points.shape != b.points.shape or not np.array_equal(a.points, b.points)
    assert not np.array_equal(a.cameras["front"].image, b.cameras["front"].image)


def test_a_frame_renders_the_same_alone_or_in_sequence():
    seq = generate_sequence(make_config("tiny"))
    alone = SyntheticGenerator(make_config("tiny")).render(2).frame
    _assert_frames_identical(seq.frames[2], alone)


def test_sensor_changes_do_not_move_the_world():
    # The scene comes from its own random stream: other sensors see the same street and poses.
    base = SyntheticGenerator(make_config("tiny"))
    cfg = make_config("tiny")
    other = SyntheticGenerator(
        dataclasses.replace(
            cfg, cameras=cfg.cameras[:1], lidar=dataclasses.replace(cfg.lidar, columns=128)
        )
    )
    assert np.array_equal(base.world_from_lidar(2), other.world_from_lidar(2))
    ta, tb = base.object_trajectories(), other.object_trajectories()
    assert ta.keys() == tb.keys()
    assert all(np.array_equal(ta[k], tb[k]) for k in ta)


def test_output_does_not_depend_on_thread_count():
    expected = _digest(
        SyntheticGenerator(make_config("tiny", num_frames=2)).render(i).frame for i in range(2)
    )
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS="1",
        OPENBLAS_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""),
    )
    out = subprocess.run(
        [sys.executable, "-c", _HASH_SNIPPET],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert out.stdout.strip() == expected
