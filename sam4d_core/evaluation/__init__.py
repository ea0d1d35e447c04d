"""Paper-style streaming evaluation (ROS-free; used by ``training/evaluate.py`` and the ROS demo).

Modules: :mod:`.metrics` (IoU, DAVIS J / F / J&F, LiDAR IoU with an ignore mask, aggregation
rules), :mod:`.first_frame_prompts` (deterministic 1-click / 3-click / box / mask prompts from
ground truth, in a camera or in the LiDAR), :mod:`.streaming_eval` (the streaming tracker over a
sequence, every object prompted on its first frame; object selection; the demo's object),
:mod:`.report` (JSON layout, the paper's table in Markdown, lookups).

For the ROS demo::

    from sam4d_core.evaluation import load_report, object_result, pick_demo_object

    oid = pick_demo_object(sequence, "front")
    entry = object_result(load_report(), "synthetic_drive", oid, "1click", "img")
    entry["first_frame"], entry["prompt_detail"]["camera"], entry["prompt_detail"]["points"]
    entry["image_iou"], entry["image_miou"]
"""

from sam4d_core.evaluation.first_frame_prompts import (
    MODALITIES,
    PROMPT_TYPES,
    FirstFramePrompt,
    ObjectVisibility,
    center_pixel,
    center_point,
    make_first_frame_prompt,
)
from sam4d_core.evaluation.metrics import (
    FrameScores,
    ObjectScores,
    boundary_f,
    lidar_iou,
    mask_iou,
)
from sam4d_core.evaluation.report import load_report, object_result, render_markdown
from sam4d_core.evaluation.streaming_eval import (
    EvalConfig,
    SequenceResult,
    evaluate_sequence,
    pick_demo_object,
    select_objects,
)

__all__ = [
    "MODALITIES",
    "PROMPT_TYPES",
    "EvalConfig",
    "FirstFramePrompt",
    "FrameScores",
    "ObjectScores",
    "ObjectVisibility",
    "SequenceResult",
    "boundary_f",
    "center_pixel",
    "center_point",
    "evaluate_sequence",
    "lidar_iou",
    "load_report",
    "make_first_frame_prompt",
    "mask_iou",
    "object_result",
    "pick_demo_object",
    "render_markdown",
    "select_objects",
]
