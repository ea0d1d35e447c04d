"""The MCMA locality diagnostic (training.memory_locality): its metrics on hand-made cases, and
that it tells a memory attention that reads by position from one that does not."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.config import apply_overrides, load_train_config  # noqa: E402
from training.memory_locality import deviation_locality, main, measure  # noqa: E402
from training.train import build_model  # noqa: E402

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
    data = json.loads(out.read_text())
    assert data["frames"] == 2 and data["image_uniform"] > 0
