"""The resolution ceiling (training.analysis.resolution_ceiling): oracle masks through the model's
own output paths, checked by hand and against the model's LiDAR encoder."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from sam4d_core.build_sam import build_sam4d
from sam4d_core.data.synthetic import generate_sequence, make_config
from sam4d_core.evaluation.streaming_eval import EvalConfig
from sam4d_core.modeling.configs import get_config
from training.analysis.resolution_ceiling import (
    LidarGrid,
    image_ceiling_mask,
    main,
    measure,
)


def _blob(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    cy, cx = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w
    return (yy - cy) ** 2 / (0.2 * h) ** 2 + (xx - cx) ** 2 / (0.15 * w) ** 2 < 1


def test_an_image_grid_at_the_camera_size_is_exact() -> None:
    gt = _blob(96, 160, 0)
    assert np.array_equal(image_ceiling_mask(gt, (96, 160)), gt)


def test_a_coarse_image_grid_loses_thin_and_small_objects() -> None:
    line = np.zeros((96, 160), bool)
    line[:, 50] = True  # one pixel wide: a quarter of any 4 x 4 cell at most
    assert not image_ceiling_mask(line, (24, 40)).any()
    gt = _blob(96, 160, 1)
    coarse = image_ceiling_mask(gt, (24, 40))
    inter, union = (coarse & gt).sum(), (coarse | gt).sum()
    assert 0.8 < inter / union < 1.0  # a large blob keeps most of its area, not all


def _cluster(center: tuple[float, float, float], n: int, rng: np.random.Generator) -> np.ndarray:
    return (np.asarray(center) + rng.uniform(-0.3, 0.3, size=(n, 3))).astype(np.float32)


def test_separate_lidar_objects_are_exact_and_shared_voxels_are_not() -> None:
    cfg = get_config("sam4d_small")  # 0.2 m voxels: logits on 0.8 m stride-4 voxels
    rng = np.random.default_rng(0)
    pts = np.concatenate([_cluster((10, 0, 0), 50, rng), _cluster((20, 5, 0), 50, rng)])
    grid = LidarGrid.of(pts, cfg)
    gt = np.zeros(len(pts), bool)
    gt[:50] = True
    assert np.array_equal(grid.ceiling_mask(gt), gt)
    # Three object points among many background points of the same voxels: no logit marks them.
    few = np.zeros(len(pts), bool)
    few[[0, 1, 2]] = True
    assert not grid.ceiling_mask(few).any()


def test_the_lidar_grid_is_the_one_the_model_predicts_on() -> None:
    """Oracle masks through the model encoder's own stride-4 voxels and weights equal those of
    the geometric :class:`LidarGrid`: the grid assumption holds."""
    cfg = get_config("sam4d_tiny")
    model = build_sam4d(cfg)
    frame = generate_sequence(make_config("tiny", seed=2, num_frames=1)).frames[0]
    with torch.no_grad():
        lid = model._encode_points(frame.points, multi_modal=True)
    rows = lid.point_to_s4.long()
    theirs = LidarGrid(rows, int(rows.max()) + 1, lid.devox_rows, lid.devox_weights)
    ours = LidarGrid.of(frame.points, cfg)
    assert ours.num_voxels == theirs.num_voxels
    ids = [i for i in np.unique(frame.point_labels) if i > 0]
    assert len(ids) >= 3
    for oid in ids:
        gt = frame.point_labels == oid
        assert np.array_equal(ours.ceiling_mask(gt), theirs.ceiling_mask(gt)), oid


def test_measure_reports_the_evaluation_objects_and_a_finer_config_is_higher() -> None:
    seq = generate_sequence(make_config("tiny", seed=3, num_frames=2, name="tiny_3"))
    ec = EvalConfig(min_pixels=20, min_points=5, max_objects=2)
    small = get_config("sam4d_small")
    rep = measure(small, [seq], ec, ["tiny"])
    assert rep.objects and sum(o.selected for o in rep.objects) == 2
    s = rep.summary(False)
    assert 0.0 < s["image_miou"] < 1.0 and 0.0 < s["lidar_miou"] <= 1.0
    # Logits at the camera's own size (a 160 x 96 camera, input 640 x 384) reach IoU 1 exactly.
    exact = dataclasses.replace(
        small, image=dataclasses.replace(small.image, image_size=(384, 640))
    )
    assert measure(exact, [seq], ec, ["tiny"]).summary(False)["image_miou"] == 1.0


def test_the_cli_writes_the_table_and_json(tmp_path, capsys) -> None:
    out = tmp_path / "c.json"
    argv = ["--config", "sam4d_tiny", "--preset", "tiny", "--synthetic-seeds", "5", "6"]
    assert main([*argv, "--frames", "2", "--min-pixels", "20", "--json", str(out), "--quiet"]) == 0
    table = capsys.readouterr().out
    assert "Resolution ceiling of sam4d_tiny" in table and "the evaluation's objects" in table
    rep = json.loads(out.read_text())
    assert rep["config"] == "sam4d_tiny" and rep["evaluated_objects"]["objects"] >= 1
    assert rep["all_candidates"]["objects"] >= rep["evaluated_objects"]["objects"]


def test_bad_seeds_are_refused() -> None:
    with pytest.raises(SystemExit, match="START < STOP"):
        main(["--synthetic-seeds", "5", "5"])
