"""The bundled default model: where it lives and what produced it.

``sam4d_small_synthetic.pt`` is the ``sam4d_small`` configuration (with MCMA's distance bias)
trained on synthetic drives (its recipe and the commands: ``training/configs/
sam4d_small_synthetic.yaml``; how long it took, on what: ``training/RESULTS.md``), stored
in half precision in our checkpoint format with its config embedded. It ships inside this Python
package so that every install (colcon, ``pip install``) finds it next to the code that loads it;
its evaluation report is ``sam4d_small_synthetic_eval.md`` / ``.json`` beside it.
"""

from __future__ import annotations

from pathlib import Path

WEIGHTS_DIR = Path(__file__).resolve().parent
BUNDLED_MODEL_NAME = "sam4d_small_synthetic"
BUNDLED_MODEL = WEIGHTS_DIR / f"{BUNDLED_MODEL_NAME}.pt"
BUNDLED_EVAL_JSON = WEIGHTS_DIR / f"{BUNDLED_MODEL_NAME}_eval.json"
BUNDLED_EVAL_MD = WEIGHTS_DIR / f"{BUNDLED_MODEL_NAME}_eval.md"
# The learned boundary refiner the tracker applies to camera masks (training.train_refiner).
BUNDLED_REFINER = WEIGHTS_DIR / "mask_refiner_synthetic.pt"


def bundled_model_path() -> Path:
    """The bundled checkpoint; raises FileNotFoundError saying how to produce it when absent."""
    if not BUNDLED_MODEL.is_file():
        raise FileNotFoundError(
            f"the bundled default model {BUNDLED_MODEL} is missing; train it with the commands "
            "in training/configs/sam4d_small_synthetic.yaml"
        )
    return BUNDLED_MODEL


__all__ = [
    "BUNDLED_EVAL_JSON",
    "BUNDLED_EVAL_MD",
    "BUNDLED_MODEL",
    "BUNDLED_MODEL_NAME",
    "BUNDLED_REFINER",
    "WEIGHTS_DIR",
    "bundled_model_path",
]
