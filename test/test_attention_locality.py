"""The attention locality diagnostic (training.analysis.attention_locality): its metrics on
hand-made cases, that it tells a memory attention that reads by position from one that does not,
and that its click attention and encoding scale measure what they say."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.analysis.attention_locality import (  # noqa: E402
    _token_fractions,
    click_attention_mass,
    deviation_locality,
    linear_probe_iou,
    main,
    measure,
    object_deviations,
)
from training.config import apply_overrides, load_train_config  # noqa: E402
from training.datasets import ClipDataset, build_source  # noqa: E402
from training.model_setup import build_model  # noqa: E402
from training.prompt_simulation import LIDAR, initial_prompt  # noqa: E402

POSITIONAL = (
    "model_overrides={memory_attention: "
    "{pos_scale: 0.3, tie_qk_init: true, pos_enc_at_cross_attn_queries: true}}"
)


def test_deviation_locality_hand_cases() -> None:
    torch.manual_seed(0)
    base = torch.randn(1, 10, 4).expand(3, -1, -1).clone()
    inside = torch.zeros(3, 10, dtype=torch.bool)
    inside[0, :3] = True
    inside[1, 5:] = True
    inside[2, :] = True  # no place outside: skipped
    local = base.clone()
    local[0, :3] += 5.0  # object 0's signal only where it is
    local[1, 5:] -= 5.0
    # By hand (4 channels, offsets +5 / -5, the mean over 3 objects): object 0 deviates by
    # 2 * 10/3 on its 3 places, by 2 * 5/3 on object 1's 5 places and 0 on the other 2.
    ratios = deviation_locality(local, inside)
    assert ratios == pytest.approx([(20 / 3) / (50 / 3 / 7), (20 / 3) / (10 / 3 / 5 * 3)])
    # The same signal spread over every place: no locality.
    spread = base.clone()
    spread[0] += 5.0
    spread[1] -= 5.0
    assert deviation_locality(spread, inside) == pytest.approx([1.0, 1.0], rel=1e-5)


def test_linear_probe_reads_a_shared_inside_direction_only() -> None:
    """Tokens that mark an object's places with one direction for every object are read by the
    probe on unseen objects (IoU ~1); an object-specific random marking is not."""
    gen = torch.Generator().manual_seed(0)
    direction = torch.randn(16, generator=gen)

    def objects(n: int, shared: bool) -> list:
        out = []
        for _ in range(n):
            tokens = torch.randn(3, 40, 16, generator=gen)  # 3 objects on 40 places
            inside = torch.zeros(3, 40, dtype=torch.bool)
            for k in range(3):
                inside[k, torch.randperm(40, generator=gen)[:8]] = True
                mark = direction if shared else torch.randn(16, generator=gen)
                tokens[k, inside[k]] += 4.0 * mark
            out += object_deviations(tokens, inside)
        return out

    assert linear_probe_iou(objects(6, True), objects(3, True)) > 0.9
    assert linear_probe_iou(objects(6, False), objects(3, False)) < 0.5
    assert linear_probe_iou([], objects(1, True)) is None
    # Objects that cover no place are left out.
    assert object_deviations(torch.zeros(2, 5, 4), torch.zeros(2, 5, dtype=torch.bool)) == []


@pytest.mark.parametrize("seed", [0, 1])
def test_positional_memory_attention_reads_the_memory_where_the_object_is(seed: int) -> None:
    """A fresh MCMA as released attends at random (self mass ~ uniform); the tied, scaled,
    query-encoded form (stage 10's) puts many times more on the memory of its own place."""
    torch.set_num_threads(1)
    cfg = apply_overrides(load_train_config("tiny_test"), [f"seed={seed}"])
    reports = {}
    for name, over in (("released", []), ("positional", [POSITIONAL])):
        c = apply_overrides(cfg, over)
        torch.manual_seed(seed)
        reports[name] = measure(build_model(c, torch.device("cpu")), c, num_frames=3)
    rel, pos = reports["released"], reports["positional"]
    assert rel.frames == pos.frames == 3 and rel.objects >= 6
    for r in (rel, pos):
        for mass, uniform in (
            (r.image_self_mass, r.image_uniform),
            (r.lidar_self_mass, r.lidar_uniform),
        ):
            assert mass is not None and uniform is not None and 0.0 <= mass <= 1.0
            assert 0.0 < uniform < 0.01
    assert rel.image_self_mass < 2 * rel.image_uniform
    assert pos.image_self_mass > 5 * max(rel.image_self_mass, pos.image_uniform)
    assert pos.lidar_self_mass > 2 * max(rel.lidar_self_mass, pos.lidar_uniform)
    # The memory encoder is the same in both: its locality does not depend on MCMA.
    assert rel.lidar_memory_locality == pytest.approx(pos.lidar_memory_locality)


def test_cli_prints_a_table_and_writes_json(tmp_path: Path, capsys) -> None:
    out = tmp_path / "loc.json"
    assert main(["--config", "tiny_test", "--frames", "2", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| image |" in text and "| LiDAR |" in text and "self mass" in text
    assert "click mass" in text
    data = json.loads(out.read_text())
    assert data["frames"] == 2 and data["image_uniform"] > 0
    # (tiny_test's few objects are not always in the camera: the click numbers may be absent)
    for name in ("image", "lidar"):
        if data[f"{name}_click_mass"] is not None:
            assert 0.0 <= data[f"{name}_click_mass"] <= 1.0
            assert 0.0 < data[f"{name}_click_area"] < 1.0
        assert data[f"{name}_pe_ratio"] > 0
    assert "probe IoU" in text
    for key in ("memory_probe_iou", "conditioned_probe_iou"):
        for name in ("image", "lidar"):
            v = data[f"{name}_{key}"]
            assert v is None or 0.0 <= v <= 1.0


def test_click_attention_is_a_distribution_over_the_clicked_branch() -> None:
    """The click's weights over all scene tokens of its branch sum to 1 (the right token of the
    right call); over the object's tokens they are a part of that."""
    torch.set_num_threads(1)
    cfg = load_train_config("tiny_test")
    torch.manual_seed(0)
    model = build_model(cfg, torch.device("cpu")).eval()
    data = dataclasses.replace(cfg.data, clip_length=1, frame_stride=(0, 0))
    ds = ClipDataset([build_source(s) for s in cfg.data.sources], data, seed=1)
    rng = np.random.default_rng(0)
    checked: set[str] = set()
    with torch.no_grad():
        for g in range(30):
            sample = ds.sample(g)
            features = model.encode_frame(**sample.model_inputs(0))
            fractions = _token_fractions(sample, features, model)
            for k in range(sample.num_objects):
                for name, frac, view in zip(("image", "lidar"), fractions, (0, LIDAR), strict=True):
                    if name in checked or frac is None or not bool((frac[k] > 0.25).any()):
                        continue
                    st = initial_prompt(sample, k, cfg.prompts, rng, modality=name, kind="click")
                    if st.view != view:
                        continue
                    prompt = st.to_prompts(None, None)
                    lidar = name == "lidar"
                    every = torch.ones(frac.shape[1], dtype=torch.bool)
                    total = click_attention_mass(model, features, prompt, every, lidar)
                    assert total == pytest.approx(1.0, abs=1e-5)
                    part = click_attention_mass(model, features, prompt, frac[k] > 0.25, lidar)
                    assert 0.0 < part < 1.0
                    checked.add(name)
            if len(checked) == 2:
                break
    assert checked == {"image", "lidar"}


def test_scaled_umpe_coordinates_bring_the_encodings_to_the_token_scale() -> None:
    """The measured reason for ``umpe.coord_scale``: on raw metres a fresh model's encodings are
    many times its tokens' norm; scaled, they are of the same order."""
    torch.set_num_threads(1)
    ratios = {}
    for scale in (1.0, 0.05):
        c = apply_overrides(
            load_train_config("tiny_test"), [f"model_overrides={{umpe: {{coord_scale: {scale}}}}}"]
        )
        torch.manual_seed(0)
        ratios[scale] = measure(build_model(c, torch.device("cpu")), c, num_frames=1)
    assert ratios[1.0].image_pe_ratio > 3 * ratios[0.05].image_pe_ratio
    assert ratios[1.0].lidar_pe_ratio > 3 * ratios[0.05].lidar_pe_ratio
