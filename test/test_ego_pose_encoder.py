"""SO(3) log map (stable near 0 and pi) and the ego-pose encoder of object pointers."""

from __future__ import annotations

import math

import pytest
import torch

from sam4d_core.modeling.ego_pose_encoder import EgoPoseEncoder, so3_exp, so3_log


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: intra-op threads only add contention on the shared 2-core machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def rot_z(a: float) -> torch.Tensor:
    c, s = math.cos(a), math.sin(a)
    return torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)


def released_log(r: torch.Tensor) -> torch.Tensor:
    """The released implementation's formula (arccos of the clamped trace, skew / sin)."""
    trace = r[:, 0, 0] + r[:, 1, 1] + r[:, 2, 2]
    theta = torch.arccos(torch.clamp((trace - 1) / 2, -1 + 1e-6, 1 - 1e-6))
    skew = (r - r.transpose(1, 2)) / 2
    a = torch.stack([skew[:, 2, 1], skew[:, 0, 2], skew[:, 1, 0]], dim=1)
    return a / torch.sin(theta)[:, None] * theta[:, None]


def test_known_rotations() -> None:
    torch.testing.assert_close(
        so3_log(torch.eye(3, dtype=torch.float64)), torch.zeros(3, dtype=torch.float64)
    )
    torch.testing.assert_close(
        so3_log(rot_z(0.3)), torch.tensor([0.0, 0.0, 0.3], dtype=torch.float64)
    )
    torch.testing.assert_close(
        so3_log(rot_z(-2.0)), torch.tensor([0.0, 0.0, -2.0], dtype=torch.float64)
    )
    # 180 degrees about x: diag(1, -1, -1); the axis is recovered up to sign.
    half_turn = torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64))
    omega = so3_log(half_turn)
    torch.testing.assert_close(omega.abs(), torch.tensor([math.pi, 0.0, 0.0], dtype=torch.float64))
    # 120 degrees about (1, 1, 1): the cyclic permutation matrix.
    perm = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
    expected = torch.full((3,), 2 * math.pi / 3 / math.sqrt(3), dtype=torch.float64)
    torch.testing.assert_close(so3_log(perm), expected)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-9), (torch.float32, 1e-6)])
def test_log_exp_round_trip_including_near_zero_and_pi(dtype: torch.dtype, tol: float) -> None:
    g = torch.Generator().manual_seed(0)
    axes = torch.nn.functional.normalize(torch.randn(9, 3, generator=g, dtype=torch.float64), dim=1)
    angles = [0.0, 1e-9, 1e-5, 1e-3, 0.5, 2.0, 2.7, math.pi - 1e-3, math.pi - 1e-7]
    omega = axes * torch.tensor(angles, dtype=torch.float64)[:, None]
    rot = so3_exp(omega).to(dtype)
    out = so3_log(rot).double()
    assert out.dtype == torch.float64 and torch.isfinite(out).all()
    # Same rotation back (the robust check, also valid at pi where omega and -omega coincide).
    torch.testing.assert_close(so3_exp(out), rot.double(), rtol=0, atol=tol * 10)
    torch.testing.assert_close(out, omega, rtol=0, atol=tol)
    # Exactly pi: either sign.
    rot_pi = so3_exp(axes[:1] * math.pi).to(dtype)
    out_pi = so3_log(rot_pi).double()
    assert (
        min((out_pi - axes[:1] * math.pi).abs().max(), (out_pi + axes[:1] * math.pi).abs().max())
        < tol * 10
    )


def test_agrees_with_released_formula_for_ordinary_rotations() -> None:
    g = torch.Generator().manual_seed(1)
    omega = torch.nn.functional.normalize(
        torch.randn(16, 3, generator=g, dtype=torch.float64), dim=1
    )
    omega = omega * torch.linspace(0.01, 2.5, 16, dtype=torch.float64)[:, None]
    rot = so3_exp(omega)
    torch.testing.assert_close(so3_log(rot), released_log(rot), rtol=1e-5, atol=1e-6)


def test_gradients_finite_at_identity_and_pi() -> None:
    for rot in (
        torch.eye(3),
        so3_exp(torch.tensor([0.0, math.pi, 0.0])),
        so3_exp(torch.tensor([1e-6, 0.0, 0.0])),
    ):
        r = rot.clone().requires_grad_(True)
        so3_log(r).sum().backward()
        assert torch.isfinite(r.grad).all()


def test_pose_encoder_shapes_and_inputs() -> None:
    enc = EgoPoseEncoder(32)
    assert enc.d_max.dim() == 0 and enc.d_max.requires_grad
    assert [m.__class__.__name__ for m in enc.fc] == ["Linear", "ReLU", "Linear"]
    assert enc.fc[0].in_features == 6
    cur = torch.eye(4, dtype=torch.float64).repeat(5, 1, 1)
    prev = cur.clone()
    prev[:, :3, :3] = so3_exp(torch.tensor([[0.0, 0.0, 0.1]], dtype=torch.float64)).expand(5, 3, 3)
    prev[:, :3, 3] = torch.tensor([2.0, 0.0, 0.0], dtype=torch.float64)
    out = enc(cur, prev)
    assert out.shape == (5, 32) and out.dtype == torch.float32
    # The MLP input: (so3 log / pi, translation / |d_max|).
    with torch.no_grad():
        enc.d_max.fill_(-4.0)  # abs() is used
    seen = {}

    def grab(module, inputs, output) -> None:
        seen["x"] = inputs[0]

    handle = enc.fc[0].register_forward_hook(grab)
    enc(cur[:1], prev[:1])
    handle.remove()
    expected = torch.tensor([[0.0, 0.0, 0.1 / math.pi, 0.5, 0.0, 0.0]])
    torch.testing.assert_close(seen["x"], expected, rtol=1e-5, atol=1e-6)
    # Gradient reaches d_max.
    enc(cur, prev).sum().backward()
    assert enc.d_max.grad is not None and torch.isfinite(enc.d_max.grad)


def test_relative_pose_precision_far_from_origin() -> None:
    """World poses kilometres away: the 1 m relative motion survives (computed in float64)."""
    cur = torch.eye(4, dtype=torch.float64)
    cur[:3, 3] = torch.tensor([512_345.25, 4_000_123.5, 12.0], dtype=torch.float64)
    cur[:3, :3] = so3_exp(torch.tensor([0.0, 0.0, 1.2], dtype=torch.float64))
    step = torch.eye(4, dtype=torch.float64)
    step[:3, 3] = torch.tensor([1.0, 0.25, 0.0], dtype=torch.float64)
    prev = cur @ step  # the past LiDAR frame, 1 m ahead in the current LiDAR frame
    rel = EgoPoseEncoder.relative_pose(cur.float(), prev.float())
    assert rel.dtype == torch.float64
    # Inputs given in float32 lose the world position itself (~0.25 m at 4e6 m); in float64 exact.
    rel64 = EgoPoseEncoder.relative_pose(cur, prev)
    torch.testing.assert_close(rel64, step, rtol=0, atol=1e-9)
    # Augmentation: T_rel = A P_cur^-1 P_prev A^-1.
    aug = torch.eye(4, dtype=torch.float64)
    aug[:3, :3] = so3_exp(torch.tensor([0.0, 0.0, 0.5], dtype=torch.float64)) * 1.05
    torch.testing.assert_close(
        EgoPoseEncoder.relative_pose(cur, prev, aug),
        aug @ step @ torch.linalg.inv(aug),
        rtol=0,
        atol=1e-9,
    )
