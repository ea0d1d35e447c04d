"""Plain records exchanged with the streaming tracker: prompts in, per-object results out.

Units are the user's, not the model's: pixels of the camera image as received, metres in the LiDAR
frame of the prompted sweep, object ids as shown in the outputs. The tracker converts them to the
model's input resolution and tensors.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

LABEL_BACKGROUND = 0
LABEL_FOREGROUND = 1
MAX_OBJECT_ID = 65535  # ids are written into mono16 label images


@dataclass
class ImagePrompt:
    """Clicks, a box and/or a mask on one camera image.

    points: (P, 2) float64 pixels (u = column, v = row) of the image as received.
    labels: (P,) int64, 1 = foreground, 0 = background.
    box: (4,) float64 [u_min, v_min, u_max, v_max] pixels, or None.
    mask: (H, W) bool of the image's size, or None.
    """

    camera: str
    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), dtype=np.int64))
    box: np.ndarray | None = None
    mask: np.ndarray | None = None


@dataclass
class LidarPrompt:
    """Clicks, a bird's-eye box and/or a point mask on one LiDAR sweep.

    points: (P, 3) float64 metres in the LiDAR frame of the prompted sweep.
    labels: (P,) int64, 1 = foreground, 0 = background.
    box: (4,) float64 [x_min, y_min, x_max, y_max] metres (bird's-eye, all heights), or None.
    point_mask: (N,) bool over that sweep's points, or None.
    """

    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), dtype=np.int64))
    box: np.ndarray | None = None
    point_mask: np.ndarray | None = None


@dataclass
class ObjectPrompt:
    """Everything said about one object in one request, on one frame.

    object_id: the object's id (1..MAX_OBJECT_ID); the caller assigns new ids.
    stamp: time (s) of the frame the prompt was made on; None = the newest frame. A frame older
        than the tracker's frame buffer is an error.
    image / lidar: the prompts of each modality (cross-modal: both decoders see all of them).
    clear_previous: forget the object's earlier prompts and memory and restart from these.
    """

    object_id: int
    stamp: float | None = None
    image: list[ImagePrompt] = field(default_factory=list)
    lidar: LidarPrompt | None = None
    clear_previous: bool = False


@dataclass
class ObjectResult:
    """One object in one frame.

    image_masks: camera -> (H, W) bool at the camera's resolution (cameras of this frame only).
    point_mask: (N,) bool over the frame's points. point_scores: (N,) float32 probabilities.
    presence_score: object-presence probability in [0, 1]; predicted_iou in [0, 1] (of the view
        with the highest presence).
    image_presence / image_ious: camera -> presence probability / predicted IoU of that camera's
        mask (cameras of this frame only). lidar_presence / lidar_iou: the same for the LiDAR mask,
        None without LiDAR in the frame.
    prompted: the object received prompts on this frame (a conditioning frame).
    lost: the object is not tracked on this frame: re-prompting found no support for its
        predicted segment (it was not run), or its output has no mask anywhere (no pixel in any
        camera and no point; both tracker modes). A lost object is reported absent: presence 0
        (``presence_score``, ``image_presence``, ``lidar_presence``: the decoder's score of an
        empty mask is no evidence of the object) and empty masks; the predicted IoUs are kept.
    """

    object_id: int
    presence_score: float
    predicted_iou: float
    image_masks: dict[str, np.ndarray]
    point_mask: np.ndarray
    point_scores: np.ndarray
    image_presence: dict[str, float] = field(default_factory=dict)
    image_ious: dict[str, float] = field(default_factory=dict)
    lidar_presence: float | None = None
    lidar_iou: float | None = None
    prompted: bool = False
    lost: bool = False


@dataclass
class StepResult:
    """The tracker's output for one frame: every tracked object, plus stage timings (ms).

    timings_ms: image_encoder, lidar_encoder, memory_attention, decoder, memory_encoder,
        postprocess, reprompt (motion and prompt derivation of re-prompting) and total (a stage
        that did not run is absent).
    replayed_from: for the result of a prompt on a buffered past frame, the index of that frame
        (the prompted objects were re-tracked from there up to this frame); None otherwise.
    """

    timestamp: float
    frame_index: int
    objects: list[ObjectResult]
    timings_ms: dict[str, float] = field(default_factory=dict)
    replayed_from: int | None = None
