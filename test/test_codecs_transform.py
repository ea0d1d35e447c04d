"""Rigid transform codec: quaternions and matrices against hand-written rotations, slerp and
interpolation, and rejection of non-finite / non-unit / non-rigid input."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sam4d_core.codecs.errors import TransformError
from sam4d_core.codecs.transform import (
    interpolate_transform,
    invert_transform,
    matrix_to_quaternion,
    matrix_to_tq,
    quaternion_to_matrix,
    slerp,
    tq_to_matrix,
    validate_quaternion,
    validate_transform,
)

S = math.sqrt(0.5)
RZ90 = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
RX180 = np.diag([1.0, -1.0, -1.0])


def rz(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


@pytest.mark.parametrize(
    ("q", "r"),
    [
        ([0, 0, 0, 1], np.eye(3)),
        ([0, 0, S, S], RZ90),
        ([1, 0, 0, 0], RX180),
        ([0, S, 0, S], np.array([[0.0, 0, 1], [0, 1, 0], [-1, 0, 0]])),
    ],
)
def test_quaternion_matrix_known_rotations(q, r):
    np.testing.assert_allclose(quaternion_to_matrix(q), r, atol=1e-12)
    back = matrix_to_quaternion(r)
    assert back[3] >= 0
    np.testing.assert_allclose(np.abs(back @ np.asarray(q, float)), 1.0, atol=1e-12)


@settings(max_examples=200, deadline=None)
@given(
    q=st.lists(st.floats(-1, 1), min_size=4, max_size=4).filter(lambda v: 0.1 < np.linalg.norm(v)),
    t=st.lists(st.floats(-1e3, 1e3), min_size=3, max_size=3),
)
def test_round_trip_random(q, t):
    q = np.asarray(q) / np.linalg.norm(q)
    m = tq_to_matrix(t, q)
    r = m[:3, :3]
    np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-12)
    assert abs(np.linalg.det(r) - 1) < 1e-12
    t2, q2 = matrix_to_tq(m)
    np.testing.assert_allclose(t2, t)
    assert abs(abs(q2 @ q) - 1) < 1e-9  # same rotation up to sign
    np.testing.assert_allclose(invert_transform(m) @ m, np.eye(4), atol=1e-9)


def test_slerp_halfway_and_shortest_path():
    q0 = [0, 0, 0, 1]
    q1 = [0, 0, S, S]  # 90 deg about z
    mid = slerp(q0, q1, 0.5)
    np.testing.assert_allclose(quaternion_to_matrix(mid), rz(math.pi / 4), atol=1e-12)
    quarter = slerp(q0, q1, 0.25)
    np.testing.assert_allclose(quaternion_to_matrix(quarter), rz(math.pi / 8), atol=1e-12)
    # -q1 is the same rotation: slerp must not take the 270 degree way round.
    np.testing.assert_allclose(
        quaternion_to_matrix(slerp(q0, [-v for v in q1], 0.5)), rz(math.pi / 4), atol=1e-12
    )
    near = slerp(q0, [0, 0, math.sin(1e-5), math.cos(1e-5)], 0.5)  # nearly parallel branch
    np.testing.assert_allclose(quaternion_to_matrix(near), rz(1e-5), atol=1e-12)


def test_interpolate_transform():
    a = tq_to_matrix([0, 0, 0], [0, 0, 0, 1])
    b = tq_to_matrix([2, -4, 6], [0, 0, S, S])
    m = interpolate_transform(a, b, 0.5)
    np.testing.assert_allclose(m[:3, 3], [1, -2, 3])
    np.testing.assert_allclose(m[:3, :3], rz(math.pi / 4), atol=1e-12)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: validate_quaternion([0, 0, 0, 2]), r"squared norm 4, not 1"),
        (lambda: validate_quaternion([0, 0, 0, 0]), r"squared norm 0, not 1"),
        (lambda: validate_quaternion([0, 0, np.nan, 1]), "non-finite values"),
        (lambda: validate_quaternion([0, 0, 1]), "must have 4 values, got 3"),
        (lambda: tq_to_matrix([0, np.inf, 0], [0, 0, 0, 1]), "translation has non-finite"),
        (lambda: validate_transform(np.diag([1.0, 1, 2, 1])), "not a rotation"),
        (lambda: validate_transform(np.diag([1.0, 1, -1, 1])), r"det = -1"),
        (lambda: validate_transform(np.ones((3, 4))), r"must be \(4, 4\)"),
        (lambda: validate_transform([[1, 0, 0, 0]] * 3 + [[0, 0, 0, 1]]), "not a rotation"),
        (
            lambda: validate_transform(np.vstack([np.eye(4)[:3], [0, 0, 1, 1]])),
            r"last row is \[0.0, 0.0, 1.0, 1.0\]",
        ),
        (lambda: matrix_to_tq(np.full((4, 4), np.nan)), "non-finite"),
    ],
)
def test_invalid_transforms_raise(call, message):
    with pytest.raises(TransformError, match=message):
        call()


def test_slightly_denormalized_quaternion_is_renormalized():
    q = validate_quaternion([0, 0, 0, 1.004])  # within tf2's tolerance (float32 round trips)
    assert abs(np.linalg.norm(q) - 1) < 1e-15
