"""The model and the tracker of ``sam4d_node``: built from the parameters (``model.*``,
``tracker.*``), with every failure turned into a ``NodeStartupError`` that says why."""

from __future__ import annotations

import math
import time
from typing import Any

from sam4d_ros.parameters import NodeParameters

__all__ = ["NodeStartupError", "load_model", "load_tracker", "tracker_config"]

# The tracker buffers tracker.frame_buffer_s of sweeps at up to this rate (and at least 32 frames).
_BUFFER_RATE_HZ = 10.0


class NodeStartupError(RuntimeError):
    """The node cannot start (invalid parameters, unreadable model); the message says why."""


def tracker_config(params: NodeParameters, model: Any) -> Any:
    """The TrackerConfig the node runs with (tests build their in-process reference with it).

    Memory sizes above what the model was trained with are clamped to the model's (its temporal
    embeddings are learned per slot).
    """
    from sam4d_core.tracking.reprompt import RepromptConfig
    from sam4d_core.tracking.streaming_tracker import TrackerConfig

    mem = model.config.memory
    offsets = [abs(c.time_offset_s) for c in params.cameras]
    return TrackerConfig(
        frame_buffer_s=params.frame_buffer_s,
        max_buffer_frames=max(32, int(math.ceil(params.frame_buffer_s * _BUFFER_RATE_HZ)) + 2),
        # A prompt on an image stamp matches its sweep within the sync tolerance (+ offsets).
        stamp_tolerance_s=max(0.05, params.sync_tolerance_s + max(offsets, default=0.0)),
        mask_threshold=min(max(params.mask_threshold, 1e-6), 1.0 - 1e-6),
        max_objects=params.max_objects,
        num_maskmem=min(params.num_maskmem, max(int(mem.num_maskmem), 1)),
        max_object_pointers=min(
            params.max_object_pointers, max(int(mem.max_obj_ptrs_in_encoder), 1)
        ),
        reprompt=params.reprompt,
        reprompt_config=RepromptConfig(memory=params.reprompt_with_memory),
        refine_masks=params.refine_masks,
        lift_image_clicks=params.lift_image_clicks,
        zoom=params.zoom,
        boundary_refine=params.boundary_refine,
        runtime=params.runtime,
        onnx_dir=params.onnx_dir or None,
        runtime_threads=params.num_threads,
        trt_precision=params.trt_precision,
    )


def load_model(params: NodeParameters) -> Any:
    """Build the model of ``model.config`` / ``model.checkpoint`` on ``model.device``; raises
    NodeStartupError with the reason."""
    from sam4d_core.build_sam import build_sam4d

    try:
        return build_sam4d(
            params.model_config or None, checkpoint=params.model_checkpoint, device=params.device
        )
    except Exception as e:  # CheckpointError, ValueError, OSError, torch errors: all fatal here
        raise NodeStartupError(
            f"cannot load the model (config '{params.model_config or 'from the checkpoint'}', "
            f"checkpoint {params.model_checkpoint}, device {params.device}): "
            f"{type(e).__name__}: {e}"
        ) from e


def load_tracker(params: NodeParameters, log: Any) -> tuple[Any, Any, str]:
    """(model, StreamingTracker, a one-line summary of the model) for the node; logs the loading.
    Raises NodeStartupError."""
    from sam4d_core.runtime.manifest import RuntimeSetupError
    from sam4d_core.tracking.streaming_tracker import StreamingTracker

    p = params
    log.info(
        f"loading model (config '{p.model_config or 'from the checkpoint'}', checkpoint "
        f"{p.model_checkpoint}, device {p.device}, runtime {p.runtime})"
    )
    if p.num_threads > 0:
        import torch

        torch.set_num_threads(p.num_threads)
    t0 = time.monotonic()
    model = load_model(p)
    try:
        tracker = StreamingTracker(model, tracker_config(p, model))
    except RuntimeSetupError as e:  # model.runtime: a package, file or export mismatch
        raise NodeStartupError(f"model.runtime '{p.runtime}': {e}") from e
    n_params = sum(int(v.numel()) for v in model.parameters())
    summary = (
        f"{model.config.name} ({n_params / 1e6:.2f} M parameters) from "
        f"{p.model_checkpoint} on {p.device}"
    )
    log.info(f"model {summary} loaded in {time.monotonic() - t0:.1f} s")
    return model, tracker, summary
