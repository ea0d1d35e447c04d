"""2D sine positional encoding (with the released quirk) and 3D random Fourier features."""

from __future__ import annotations

import math

import torch

from sam4d_core.modeling.position_encoding import (
    PositionEmbeddingRandom,
    PositionEmbeddingSine,
    sine_frequencies,
)


def reference_sine(pos: torch.Tensor, dim_t: torch.Tensor) -> torch.Tensor:
    """Straightforward per-channel encoding of one axis: (N,) -> (N, len(dim_t))."""
    out = torch.empty(pos.shape[0], dim_t.shape[0])
    for i in range(dim_t.shape[0]):
        f = torch.sin if i % 2 == 0 else torch.cos
        out[:, i] = f(pos / dim_t[i])
    return out


def test_intended_frequencies_match_sam2_formula() -> None:
    dim_t = sine_frequencies(256, 10000.0, released_frequency_quirk=False)
    assert dim_t.shape == (128,)
    expected = torch.tensor([10000.0 ** (2 * (i // 2) / 128) for i in range(128)])
    torch.testing.assert_close(dim_t, expected)
    assert dim_t[0] == 1 and dim_t[-1] > 5000  # a geometric range of wavelengths


def test_released_quirk_makes_every_frequency_one() -> None:
    # The released expression, evaluated by Python itself: / and // bind left to right.
    released = [10000 ** (2 * (i // 2) / 256 // 2) for i in range(128)]
    assert set(released) == {1.0}
    dim_t = sine_frequencies(256, 10000.0, released_frequency_quirk=True)
    torch.testing.assert_close(dim_t, torch.ones(128))


def test_grid_encoding_shape_dtype_and_values() -> None:
    pe = PositionEmbeddingSine(256)
    feat = torch.zeros(2, 7, 6, 5, dtype=torch.float16)
    out = pe(feat)
    assert out.shape == (2, 256, 6, 5) and out.dtype == torch.float32
    torch.testing.assert_close(out[0], out[1])
    # Cell centres (i + 0.5) / n * 2 pi; first half encodes y, second half x.
    y = (torch.arange(6) + 0.5) / (6 + 1e-6) * 2 * math.pi
    x = (torch.arange(5) + 0.5) / (5 + 1e-6) * 2 * math.pi
    dim_t = sine_frequencies(256)
    torch.testing.assert_close(out[0, :128, :, 0].T, reference_sine(y, dim_t))
    torch.testing.assert_close(out[0, 128:, 0, :].T, reference_sine(x, dim_t))
    # Each half is constant along the other axis.
    torch.testing.assert_close(out[0, :128, :, 0], out[0, :128, :, 4])


def test_sam2_positions_without_pixel_centers() -> None:
    pe = PositionEmbeddingSine(64, pixel_centers=False)
    out = pe.grid(4, 3)
    y = torch.arange(1, 5, dtype=torch.float32) / (4 + 1e-6) * 2 * math.pi
    torch.testing.assert_close(out[:32, :, 0].T, reference_sine(y, sine_frequencies(64)))


def test_quirk_flag_changes_the_encoding_as_documented() -> None:
    fixed = PositionEmbeddingSine(256).grid(8, 8)
    quirk = PositionEmbeddingSine(256, released_frequency_quirk=True).grid(8, 8)
    # With the quirk every channel pair of an axis is (sin p, cos p) of the same p ...
    y = (torch.arange(8) + 0.5) / (8 + 1e-6) * 2 * math.pi
    for k in range(64):
        torch.testing.assert_close(quirk[2 * k, :, 0], torch.sin(y))
        torch.testing.assert_close(quirk[2 * k + 1, :, 0], torch.cos(y))
    # ... channels 0 and 1 of each half have divisor 1 in both versions, the rest differ.
    for half in (0, 128):
        torch.testing.assert_close(quirk[half : half + 2], fixed[half : half + 2])
        assert (quirk[half + 2 : half + 128] - fixed[half + 2 : half + 128]).abs().max() > 0.5


def test_sparse_encoding_matches_dense_grid_at_cell_centres() -> None:
    for quirk in (False, True):
        pe = PositionEmbeddingSine(256, released_frequency_quirk=quirk)
        dense = pe.grid(6, 4)
        i, j = torch.meshgrid(torch.arange(6), torch.arange(4), indexing="ij")
        stride = 16.0
        uv = torch.stack(((j + 0.5) * stride, (i + 0.5) * stride), dim=-1)  # pixels
        sparse = pe.encode_pixels(uv, (6 * 16, 4 * 16))
        assert sparse.shape == (6, 4, 256)
        torch.testing.assert_close(sparse.permute(2, 0, 1), dense, atol=1e-5, rtol=0)


def test_random_fourier_features() -> None:
    torch.manual_seed(0)
    rff = PositionEmbeddingRandom(256, in_channels=3)
    g = rff.positional_encoding_gaussian_matrix
    assert g.shape == (3, 128)
    assert "positional_encoding_gaussian_matrix" in rff.state_dict()
    assert len(list(rff.parameters())) == 0  # a buffer, not trained
    xyz = torch.tensor([[10.0, -3.0, 1.5], [0.0, 0.0, 0.0], [55.0, 20.0, -2.0]])
    out = rff(xyz)
    assert out.shape == (3, 256) and out.dtype == torch.float32
    # Raw metres, no 2 pi, no normalisation: [sin(x G), cos(x G)].
    proj = xyz @ g
    torch.testing.assert_close(out, torch.cat((proj.sin(), proj.cos()), dim=-1))
    # Every (sin, cos) pair lies on the unit circle.
    torch.testing.assert_close(out.pow(2).sum(-1), torch.full((3,), 128.0))
    # Batched shapes.
    assert rff(torch.randn(2, 5, 3)).shape == (2, 5, 256)
    assert rff.forward_with_coords(xyz).shape == (3, 256)
