"""Training losses against hand-computed values: focal, dice, IoU prediction, presence, ignore
labels, absent objects, multimask best-of, and the accumulation over views."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.append(str(Path(__file__).resolve().parents[1]))  # the repository's training/ package

from training.config import LossConfig  # noqa: E402
from training.losses import (  # noqa: E402
    LossAccumulator,
    actual_iou,
    dice_loss,
    image_targets_for_logits,
    sigmoid_focal_loss,
    view_losses,
)

LN2 = math.log(2.0)


def test_focal_hand_computed() -> None:
    # Logit 0: p = 0.5, ce = ln 2, (1 - p_t)^2 = 1/4; alpha_t 0.25 (positive) / 0.75 (negative).
    logits = torch.zeros(1, 2)
    targets = torch.tensor([[1.0, 0.0]])
    expected = (0.25 * 0.25 * LN2 + 0.75 * 0.25 * LN2) / 2
    assert sigmoid_focal_loss(logits, targets).item() == pytest.approx(expected)
    # No alpha, gamma 0: plain BCE.
    x = torch.tensor([[2.0, -1.0]])
    t = torch.tensor([[1.0, 1.0]])
    bce = (math.log1p(math.exp(-2.0)) + math.log1p(math.exp(1.0))) / 2
    assert sigmoid_focal_loss(x, t, alpha=-1, gamma=0).item() == pytest.approx(bce)
    # A confident correct prediction costs almost nothing.
    assert sigmoid_focal_loss(torch.tensor([[12.0]]), torch.tensor([[1.0]])).item() < 1e-9


def test_dice_and_iou_hand_computed() -> None:
    logits = torch.zeros(1, 2)
    targets = torch.tensor([[1.0, 0.0]])
    # p = (.5, .5): 1 - (2 * .5 + 1) / (1 + 1 + 1) = 1/3.
    assert dice_loss(logits, targets).item() == pytest.approx(1 / 3)
    # Empty prediction (very negative) and empty target: (0 + 1) / (0 + 1) -> no loss.
    assert dice_loss(torch.full((1, 3), -50.0), torch.zeros(1, 3)).item() == pytest.approx(0.0)
    pred = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    gt = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    assert actual_iou(pred, gt).item() == pytest.approx(1 / 3)
    # Both empty: 0 (SAM2's area_i / clamp(area_u, 1)).
    assert actual_iou(-torch.ones(1, 4), torch.zeros(1, 4)).item() == 0.0


def test_ignore_labels_are_excluded() -> None:
    logits = torch.tensor([[3.0, -2.0, 5.0, -7.0]])
    targets = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    valid = torch.tensor([True, True, False, False])
    sub_l, sub_t = logits[:, :2], targets[:, :2]
    assert sigmoid_focal_loss(logits, targets, valid=valid).item() == pytest.approx(
        sigmoid_focal_loss(sub_l, sub_t).item()
    )
    assert dice_loss(logits, targets, valid).item() == pytest.approx(dice_loss(sub_l, sub_t).item())
    assert actual_iou(logits, targets, valid).item() == pytest.approx(1.0)
    # Through view_losses: an ignored point labelled positive does not make the object present.
    cfg = LossConfig()
    t = view_losses(
        logits[:, None],
        torch.tensor([[0.0, 0.0, 1.0, 0.0]]),
        torch.ones(1, 1),
        torch.zeros(1),
        cfg,
        valid=valid,
    )
    assert t.focal.item() == 0.0 and t.dice.item() == 0.0 and t.iou.item() == 0.0
    assert t.presence.item() == pytest.approx(LN2)  # BCE(0, absent)


def test_view_losses_single_mask_hand_computed() -> None:
    cfg = LossConfig(iou_l1=True)
    logits = torch.zeros(1, 1, 2)
    targets = torch.tensor([[1.0, 0.0]])
    t = view_losses(logits, targets, torch.tensor([[0.25]]), torch.tensor([2.0]), cfg)
    assert t.focal.item() == pytest.approx((0.25 * 0.25 * LN2 + 0.75 * 0.25 * LN2) / 2)
    assert t.dice.item() == pytest.approx(1 / 3)
    # Logits 0 are not > 0: predicted empty, IoU 0; L1 to 0.25.
    assert t.iou.item() == pytest.approx(0.25)
    assert t.presence.item() == pytest.approx(math.log1p(math.exp(-2.0)))  # BCE(2, present)
    t2 = view_losses(
        logits, targets, torch.tensor([[0.25]]), torch.tensor([2.0]), LossConfig(iou_l1=False)
    )
    assert t2.iou.item() == pytest.approx(0.0625)


def test_absent_objects_only_presence() -> None:
    cfg = LossConfig()
    logits = torch.randn(2, 3, 5)
    targets = torch.zeros(2, 5)
    targets[1, 2] = 1.0  # object 1 present, object 0 absent
    scores = torch.tensor([1.5, -0.5])
    t = view_losses(logits, targets, torch.rand(2, 3), scores, cfg)
    only1 = view_losses(logits[1:], targets[1:], torch.rand(1, 3), scores[1:], cfg)
    assert t.focal.item() == pytest.approx(only1.focal.item())
    assert t.dice.item() == pytest.approx(only1.dice.item())
    # Presence: softplus(1.5) for the absent object (BCE against 0) + softplus(0.5) (against 1).
    expected = math.log1p(math.exp(1.5)) + math.log1p(math.exp(0.5))
    assert t.presence.item() == pytest.approx(expected)
    assert t.num_objects == 2
    # A zero weight removes an object entirely (its output was its own mask prompt).
    w = view_losses(logits, targets, torch.rand(2, 3), scores, cfg, weights=torch.tensor([1.0, 0]))
    assert w.focal.item() == 0.0 and w.presence.item() == pytest.approx(math.log1p(math.exp(1.5)))


def test_multimask_best_and_iou_on_all() -> None:
    cfg = LossConfig(supervise_all_iou=True)
    targets = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    good = torch.tensor([10.0, 10.0, -10.0, -10.0])
    bad = -good
    logits = torch.stack([bad, good, bad])[None]  # (1, 3, 4): the second output is right
    ious = torch.tensor([[0.0, 1.0, 0.5]])
    t = view_losses(logits, targets, ious, torch.tensor([5.0]), cfg)
    single = view_losses(good[None, None], targets, ious[:, 1:2], torch.tensor([5.0]), cfg)
    assert t.focal.item() == pytest.approx(single.focal.item())
    assert t.dice.item() == pytest.approx(single.dice.item())
    # Actual IoUs (0, 1, 0) vs predicted (0, 1, .5): L1 mean over the 3 outputs = 1/6.
    assert t.iou.item() == pytest.approx(0.5 / 3)
    best_only = view_losses(
        logits, targets, ious, torch.tensor([5.0]), LossConfig(supervise_all_iou=False)
    )
    assert best_only.iou.item() == pytest.approx(0.0)


def test_image_target_resolution_modes() -> None:
    logits = torch.randn(2, 3, 4, 6)
    gt = torch.zeros(2, 8, 12, dtype=torch.bool)
    gt[0, :4, :6] = True
    lg, tg = image_targets_for_logits(logits, gt, "gt")
    assert lg.shape == (2, 3, 96) and tg.shape == (2, 96)
    lg, tg = image_targets_for_logits(logits, gt, "logits")
    assert lg.shape == (2, 3, 24) and tg.shape == (2, 24)
    assert tg[0].sum().item() == pytest.approx(6.0)  # a quarter of the cells, area-averaged
    with pytest.raises(ValueError):
        image_targets_for_logits(logits, gt, "nope")


def test_accumulator_weights_and_camera_average() -> None:
    cfg = LossConfig(focal=20, dice=1, iou=1, presence=1, image_weight=2.0, lidar_weight=0.5)
    acc = LossAccumulator(cfg)
    one = torch.tensor(1.0)
    from training.losses import ViewLossTerms

    # Two cameras (2 objects each): image terms are the mean over cameras of sum / B.
    acc.add_image(ViewLossTerms(2 * one, 4 * one, 0 * one, 2 * one, 2))
    acc.add_image(ViewLossTerms(6 * one, 0 * one, 2 * one, 0 * one, 2))
    acc.add_lidar(ViewLossTerms(4 * one, 2 * one, 2 * one, 2 * one, 2))
    acc.end_decoding()
    s = acc.scalars()
    assert s["image_focal"] == pytest.approx(2.0) and s["image_dice"] == pytest.approx(1.0)
    assert s["image_iou"] == pytest.approx(0.5) and s["image_presence"] == pytest.approx(0.5)
    assert s["lidar_focal"] == pytest.approx(2.0) and s["lidar_dice"] == pytest.approx(1.0)
    image = 2.0 * (20 * 2.0 + 1.0 + 0.5 + 0.5)
    lidar = 0.5 * (20 * 2.0 + 1.0 + 1.0 + 1.0)
    assert acc.total().item() == pytest.approx(image + lidar)
    assert acc.decodings == 1
