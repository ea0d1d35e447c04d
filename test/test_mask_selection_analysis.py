"""The multimask-selection diagnostic (training.analysis.mask_selection): the oracle of the 3
outputs bounds every choice, the released rule (gain 0) is what the model keeps without the
switch, and the CLI prints the table and writes the JSON."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sam4d_core.build_sam import build_sam4d  # noqa: E402
from sam4d_core.checkpoint import FORMAT_NAME, FORMAT_VERSION, save_atomic  # noqa: E402
from sam4d_core.modeling.configs import config_to_dict, get_config  # noqa: E402
from sam4d_core.modeling.sam4d_base import SAM4D  # noqa: E402
from training.analysis.mask_selection import main, measure, score_frame  # noqa: E402
from training.config import load_train_config  # noqa: E402
from training.validation import validation_dataset  # noqa: E402

torch.set_num_threads(1)


def _model() -> SAM4D:
    torch.manual_seed(3)
    return SAM4D(get_config("sam4d_tiny")).eval()


def test_oracle_bounds_the_chosen_mask() -> None:
    model = _model()
    ds = validation_dataset(load_train_config("tiny_test"), clip_length=1)
    rows = []
    with torch.no_grad():
        for g in range(2):
            for modality in ("image", "lidar"):
                rows += score_frame(model, ds.sample(g), modality, [0.0, 1.0])
    assert rows
    for row in rows:
        for view in ("image", "lidar"):
            oracle = row[f"{view}_oracle"]
            for gain in ("0", "1"):
                chosen = row[f"{view}_chosen_g{gain}"]
                if chosen is not None:
                    assert oracle is not None and 0.0 <= chosen <= oracle + 1e-9 <= 1.0 + 1e-9
    # The switch is restored afterwards.
    assert model.config.cross_modal_selection == 0.0


def test_cli_table_and_json(tmp_path) -> None:
    model = _model()
    ck = tmp_path / "tiny.pt"
    save_atomic(
        {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "config": config_to_dict(model.config),
            "model": model.state_dict(),
        },
        ck,
    )
    build_sam4d(checkpoint=str(ck), device="cpu")  # a checkpoint of our format
    out = tmp_path / "sel.json"
    assert (
        main(
            [
                "--checkpoint",
                str(ck),
                "--config",
                "tiny_test",
                "--clips",
                "0",
                "2",
                "--gains",
                "0,2",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    data = json.loads(out.read_text())
    assert set(data) == {"image", "lidar"}
    for vals in data.values():
        assert vals["objects"] >= 1
        assert {"image_chosen_g0", "image_chosen_g2", "image_oracle"} <= set(vals)
    with torch.no_grad():
        again = measure(
            _model(), validation_dataset(load_train_config("tiny_test"), 1), range(0, 2), [0.0, 2.0]
        )
    assert again == data
