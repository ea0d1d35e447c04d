"""Tracker results -> output messages: label images, overlays, labeled cloud, objects, markers,
diagnostics.

``StepOutputs`` wraps one ``StepResult`` and the ``BuiltFrame`` it was computed on; each output has
its own method and nothing is computed before it is asked for (the node skips outputs nobody
subscribes to); parts shared by several outputs (per-camera label images, per-point labels) are
computed once. Every message copies its input's header (stamp and frame id): label images and
overlays the camera image's, the cloud, objects and markers the sweep's.

Conventions:
- An object is drawn only when its presence score is >= ``presence_threshold``; below, it is
  absent in this sweep (occluded, out of view): it stays in ``TrackedObjects`` with its scores,
  no points and no boxes, and has no pixels, points or markers.
- Label images: mono16, 0 = background, value = object id. Where masks overlap, the object with
  the higher presence score wins (ties: the lower id). Images are in the geometry the tracker saw:
  rectified when the node undistorted the camera (same size, new camera matrix).
- Labeled cloud: every input field plus ``label`` (uint32) and ``score`` (float32: the object's
  per-point probability, 0 for background), written onto the full input cloud (organized clouds
  keep their shape; NaN points get 0). A point claimed by several objects goes to the one with the
  higher per-point probability there (ties: the lower id): for points the tracker gives a score
  per point and object, which is a better arbiter than one score per object.
- Colours: ``label_color(id)`` everywhere (overlay, markers), so an object looks the same in both.
- Markers: one DELETEALL first (stale objects vanish), then per object a LINE_LIST box (namespace
  ``sam4d/boxes``) and a TEXT_VIEW_FACING label (``sam4d/labels``), both with marker id = object id,
  so RViz keeps each object's markers stable from sweep to sweep.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from sam4d_core.codecs.image import label_color, overlay
from sam4d_core.geometry.boxes import BOX_EDGES, Box2D, Box3D, fit_box_3d, mask_box_2d
from sam4d_core.tracking.records import MAX_OBJECT_ID, ObjectResult, StepResult
from sam4d_ros.conversions.image import array_to_image_msg, labels_to_mono16_msg
from sam4d_ros.conversions.pointcloud2 import make_labeled_pointcloud2
from sam4d_ros.conversions.stamps import copy_header
from sam4d_ros.frame_builder import BuiltFrame

__all__ = [
    "BOX_NAMESPACE",
    "TEXT_NAMESPACE",
    "OutputConfig",
    "OutputError",
    "StepOutputs",
    "camera_status",
    "compose_label_image",
    "diagnostic_array",
    "key_values",
    "processing_status",
    "resolve_point_labels",
    "scatter_to_cloud",
    "stream_status",
]

BOX_NAMESPACE = "sam4d/boxes"
TEXT_NAMESPACE = "sam4d/labels"


class OutputError(ValueError):
    """A tracker result does not fit the frame it is published on (a bug upstream)."""


@dataclass(frozen=True)
class OutputConfig:
    """presence_threshold: objects below it are absent in the sweep.
    overlay_alpha: weight of the object colour in the overlay. overlay_boxes: also draw each
    object's 2D box and id on the overlay. marker_line_width, marker_text_height: metres.
    marker_min_size: smallest box edge drawn (metres), so boxes of one or two points are visible.
    """

    presence_threshold: float = 0.5
    overlay_alpha: float = 0.5
    overlay_boxes: bool = True
    marker_line_width: float = 0.05
    marker_text_height: float = 0.6
    marker_min_size: float = 0.1

    def __post_init__(self) -> None:
        if not 0.0 <= self.presence_threshold <= 1.0:
            raise ValueError(f"presence_threshold must be in [0, 1], got {self.presence_threshold}")
        if not 0.0 <= self.overlay_alpha <= 1.0:
            raise ValueError(f"overlay_alpha must be in [0, 1], got {self.overlay_alpha}")


# ------------------------------------------------------------------------------ pure functions


def compose_label_image(
    masks: Iterable[tuple[int, float, np.ndarray]], shape: tuple[int, int]
) -> np.ndarray:
    """(H, W) uint16 label image from (object id, presence score, (H, W) bool mask) triples.

    Overlaps go to the higher score (ties: the lower id).
    """
    labels = np.zeros(shape, np.uint16)
    # Paint from the weakest to the strongest: the last write wins.
    order = sorted(masks, key=lambda m: (m[1], -m[0]))
    for obj_id, _score, mask in order:
        m = np.asarray(mask)
        if m.shape != tuple(shape):
            raise OutputError(
                f"mask of object {obj_id} is {m.shape[1]}x{m.shape[0]}, image is "
                f"{shape[1]}x{shape[0]}"
            )
        labels[m.astype(bool, copy=False)] = obj_id
    return labels


def resolve_point_labels(
    objects: Sequence[ObjectResult], num_points: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per-point ((M,) uint32 label, (M,) float32 score) over the frame's points.

    A point belongs to the object whose ``point_mask`` holds it with the highest
    ``point_scores`` value (ties: the lower id); background: label 0, score 0.
    """
    labels = np.zeros(num_points, np.uint32)
    scores = np.zeros(num_points, np.float32)
    best = np.full(num_points, -np.inf, np.float32)
    for obj in sorted(objects, key=lambda o: o.object_id):
        mask = np.asarray(obj.point_mask)
        score = np.asarray(obj.point_scores, dtype=np.float32)
        if mask.shape != (num_points,) or score.shape != (num_points,):
            raise OutputError(
                f"object {obj.object_id}: point_mask {mask.shape} / point_scores {score.shape} "
                f"do not match the frame's {num_points} points"
            )
        take = mask.astype(bool, copy=False) & (score > best)
        labels[take] = obj.object_id
        scores[take] = score[take]
        best[take] = score[take]
    return labels, scores


def scatter_to_cloud(
    values: np.ndarray, valid_index: np.ndarray, num_input_points: int
) -> np.ndarray:
    """(M,) values of the valid points -> (N,) values over the full input cloud (0 elsewhere)."""
    out = np.zeros(num_input_points, dtype=values.dtype)
    out[valid_index] = values
    return out


# ------------------------------------------------------------------------------ one step


class StepOutputs:
    """The outputs of one tracker step, each built on demand (see the module docstring).

    result: the tracker's StepResult. built: the BuiltFrame the step ran on.
    Not thread-safe (one worker publishes a step).
    """

    def __init__(self, result: StepResult, built: BuiltFrame, config: OutputConfig | None = None):
        self.result = result
        self.built = built
        self.config = config or OutputConfig()
        for obj in result.objects:
            if not 1 <= int(obj.object_id) <= MAX_OBJECT_ID:
                raise OutputError(f"object id {obj.object_id} is outside [1, {MAX_OBJECT_ID}]")
        self.present: list[ObjectResult] = [
            o for o in result.objects if o.presence_score >= self.config.presence_threshold
        ]
        self._label_images: dict[str, np.ndarray] = {}
        self._camera_boxes: dict[int, dict[str, Box2D]] = {}
        self._points: tuple[np.ndarray, np.ndarray] | None = None
        self._boxes: dict[int, Box3D | None] | None = None

    @property
    def cameras(self) -> list[str]:
        """Cameras of the frame (the only ones with image outputs this sweep)."""
        return list(self.built.frame.cameras)

    # ------------------------------------------------------------------ images

    def _image_shape(self, camera: str) -> tuple[int, int]:
        cam = self.built.frame.cameras.get(camera)
        if cam is None:
            raise KeyError(f"camera '{camera}' is not in this frame (cameras: {self.cameras})")
        return int(cam.image.shape[0]), int(cam.image.shape[1])

    def label_image(self, camera: str) -> np.ndarray:
        """(H, W) uint16 label image of ``camera``."""
        hit = self._label_images.get(camera)
        if hit is None:
            shape = self._image_shape(camera)
            masks = [
                (o.object_id, o.presence_score, o.image_masks[camera])
                for o in self.present
                if camera in o.image_masks
            ]
            hit = compose_label_image(masks, shape)
            self._label_images[camera] = hit
        return hit

    def label_image_msg(self, camera: str) -> Any:
        """sensor_msgs/Image mono16 with the camera image's header."""
        return labels_to_mono16_msg(self.label_image(camera), self.built.cameras[camera].header)

    def overlay_msg(self, camera: str) -> Any:
        """sensor_msgs/Image rgb8: object colours blended over the image the tracker saw."""
        rgb = self.built.frame.cameras[camera].image
        out = overlay(rgb, self.label_image(camera), self.config.overlay_alpha)
        if self.config.overlay_boxes:
            for obj_id, box in self._boxes_in(camera):
                color = label_color(obj_id)
                cv2.rectangle(out, (box.u_min, box.v_min), (box.u_max - 1, box.v_max - 1), color, 1)
                cv2.putText(
                    out, str(obj_id), (box.u_min, max(box.v_min - 3, 10)),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.4, color, 1, cv2.LINE_AA,
                )  # fmt: skip
        return array_to_image_msg(out, "rgb8", self.built.cameras[camera].header)

    def camera_boxes(self, obj: ObjectResult) -> dict[str, Box2D]:
        """2D boxes (and pixel counts) of the object's own masks, per camera with pixels."""
        hit = self._camera_boxes.get(obj.object_id)
        if hit is None:
            hit = {}
            if obj.presence_score >= self.config.presence_threshold:
                for camera in self.cameras:
                    mask = obj.image_masks.get(camera)
                    if mask is None:
                        continue
                    if np.shape(mask) != self._image_shape(camera):
                        raise OutputError(
                            f"mask of object {obj.object_id} on camera '{camera}' has shape "
                            f"{np.shape(mask)}, image is {self._image_shape(camera)}"
                        )
                    box = mask_box_2d(mask)
                    if box is not None:
                        hit[camera] = box
            self._camera_boxes[obj.object_id] = hit
        return hit

    def _boxes_in(self, camera: str) -> list[tuple[int, Box2D]]:
        out = []
        for obj in self.present:
            box = self.camera_boxes(obj).get(camera)
            if box is not None:
                out.append((obj.object_id, box))
        return out

    # ------------------------------------------------------------------ points

    def point_labels(self) -> tuple[np.ndarray, np.ndarray]:
        """((M,) uint32 labels, (M,) float32 scores) over the frame's (valid) points."""
        if self._points is None:
            m = int(self.built.frame.points.shape[0])
            self._points = resolve_point_labels(self.present, m)
        return self._points

    def cloud_labels(self) -> tuple[np.ndarray, np.ndarray]:
        """((N,) uint32 labels, (N,) float32 scores) over the full input cloud."""
        labels, scores = self.point_labels()
        b = self.built
        return (
            scatter_to_cloud(labels, b.valid_index, b.num_input_points),
            scatter_to_cloud(scores, b.valid_index, b.num_input_points),
        )

    def labeled_cloud_msg(self) -> Any:
        """The input PointCloud2 with ``label`` and ``score`` appended (header copied)."""
        labels, scores = self.cloud_labels()
        return make_labeled_pointcloud2(self.built.cloud, labels, scores)

    def boxes_3d(self) -> dict[int, Box3D | None]:
        """Object id -> box fitted to its labeled points (None without points), present objects."""
        if self._boxes is None:
            labels, _ = self.point_labels()
            xyz = self.built.frame.points[:, :3]
            self._boxes = {}
            if self.present:
                order = np.argsort(labels, kind="stable")
                sorted_labels = labels[order]
                for obj in self.present:
                    lo, hi = np.searchsorted(sorted_labels, [obj.object_id, obj.object_id + 1])
                    self._boxes[obj.object_id] = fit_box_3d(xyz[order[lo:hi]])
        return self._boxes

    # ------------------------------------------------------------------ objects and markers

    def tracked_objects_msg(self) -> Any:
        """sam4d_ros/TrackedObjects (the sweep's header): every tracked object, present or not."""
        from sam4d_ros.msg import CameraBox, TrackedObject, TrackedObjects

        labels, scores = self.point_labels()
        boxes = self.boxes_3d()
        msg = TrackedObjects()
        msg.header = copy_header(self.built.cloud.header)
        msg.cameras_used = self.cameras
        present = {o.object_id for o in self.present}
        objects = []
        for obj in sorted(self.result.objects, key=lambda o: o.object_id):
            t = TrackedObject()
            t.id = int(obj.object_id)
            t.presence_score = float(obj.presence_score)
            t.lost = bool(obj.lost)
            t.predicted_iou = float(obj.predicted_iou)
            if obj.object_id in present:
                mine = labels == obj.object_id
                n = int(np.count_nonzero(mine))
                t.num_points = n
                t.lidar_score = float(scores[mine].mean()) if n else 0.0
                box = boxes.get(obj.object_id)
                if box is not None:
                    t.has_box_3d = True
                    _set_pose(t.box_pose, box)
                    t.box_size.x, t.box_size.y, t.box_size.z = (float(v) for v in box.size)
                cam_boxes = []
                for camera, b in self.camera_boxes(obj).items():
                    cam_boxes.append(
                        CameraBox(
                            camera_name=camera,
                            u_min=float(b.u_min),
                            v_min=float(b.v_min),
                            u_max=float(b.u_max),
                            v_max=float(b.v_max),
                            area=int(b.area),
                        )
                    )
                t.camera_boxes = cam_boxes
            objects.append(t)
        msg.objects = objects
        return msg

    def marker_array_msg(self) -> Any:
        """visualization_msgs/MarkerArray: DELETEALL, then a box and a label per present object."""
        from visualization_msgs.msg import Marker, MarkerArray

        cfg = self.config
        header = self.built.cloud.header
        clear = Marker()
        clear.header = copy_header(header)
        clear.action = Marker.DELETEALL
        markers = [clear]
        local = np.array(
            [[-1, -1, -1], [1, -1, -1], [1, 1, -1], [-1, 1, -1],
             [-1, -1, 1], [1, -1, 1], [1, 1, 1], [-1, 1, 1]], dtype=np.float64,
        )  # fmt: skip
        for obj in sorted(self.present, key=lambda o: o.object_id):
            box = self.boxes_3d().get(obj.object_id)
            if box is None:
                continue
            r, g, b = (c / 255.0 for c in label_color(obj.object_id))
            size = np.maximum(box.size, cfg.marker_min_size)
            corners = local * (0.5 * size)

            lines = Marker()
            lines.header = copy_header(header)
            lines.ns = BOX_NAMESPACE
            lines.id = int(obj.object_id)
            lines.type = Marker.LINE_LIST
            lines.action = Marker.ADD
            _set_pose(lines.pose, box)
            lines.scale.x = float(cfg.marker_line_width)
            lines.color.r, lines.color.g, lines.color.b, lines.color.a = r, g, b, 1.0
            lines.points = [_point(corners[i]) for edge in BOX_EDGES for i in edge]
            markers.append(lines)

            text = Marker()
            text.header = copy_header(header)
            text.ns = TEXT_NAMESPACE
            text.id = int(obj.object_id)
            text.type = Marker.TEXT_VIEW_FACING
            text.action = Marker.ADD
            text.pose.position.x = float(box.center[0])
            text.pose.position.y = float(box.center[1])
            text.pose.position.z = float(
                box.center[2] + 0.5 * size[2] + 0.6 * cfg.marker_text_height
            )
            text.pose.orientation.w = 1.0
            text.scale.z = float(cfg.marker_text_height)
            text.color.r, text.color.g, text.color.b, text.color.a = r, g, b, 1.0
            text.text = f"{obj.object_id} ({obj.presence_score:.2f})"
            markers.append(text)
        return MarkerArray(markers=markers)


def _point(xyz: np.ndarray) -> Any:
    from geometry_msgs.msg import Point

    return Point(x=float(xyz[0]), y=float(xyz[1]), z=float(xyz[2]))


def _set_pose(pose: Any, box: Box3D) -> None:
    pose.position.x, pose.position.y, pose.position.z = (float(v) for v in box.center)
    q = box.quaternion()
    o = pose.orientation
    o.x, o.y, o.z, o.w = (float(v) for v in q)


# ------------------------------------------------------------------------------ diagnostics


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_format_value(v) for v in value)
    return str(value)


def key_values(values: Mapping[str, Any] | None) -> list[Any]:
    """dict -> list of diagnostic_msgs/KeyValue (floats with 3 decimals, bools lowercase)."""
    from diagnostic_msgs.msg import KeyValue

    return [KeyValue(key=str(k), value=_format_value(v)) for k, v in (values or {}).items()]


def stream_status(
    name: str,
    *,
    errors: Sequence[str] = (),
    warnings: Sequence[str] = (),
    values: Mapping[str, Any] | None = None,
    hardware_id: str = "",
    ok_message: str = "OK",
) -> Any:
    """diagnostic_msgs/DiagnosticStatus: ERROR with any error, else WARN with any warning, else
    OK; the message joins the errors (or warnings) with '; '."""
    from diagnostic_msgs.msg import DiagnosticStatus

    status = DiagnosticStatus()
    status.name = name
    status.hardware_id = hardware_id
    if errors:
        status.level = DiagnosticStatus.ERROR
        status.message = "; ".join(errors)
    elif warnings:
        status.level = DiagnosticStatus.WARN
        status.message = "; ".join(warnings)
    else:
        status.level = DiagnosticStatus.OK
        status.message = ok_message
    status.values = key_values(values)
    return status


def processing_status(
    name: str,
    processing_ms: float | None,
    budget_ms: float,
    *,
    values: Mapping[str, Any] | None = None,
    errors: Sequence[str] = (),
    hardware_id: str = "",
) -> Any:
    """Status of the processing loop: WARN when the last step took longer than ``budget_ms``
    (also when no step ran yet), ERROR with errors (e.g. the last step failed)."""
    warnings = []
    if processing_ms is None:
        warnings.append("no sweep processed yet")
    elif processing_ms > budget_ms:
        warnings.append(f"processing took {processing_ms:.1f} ms, over the {budget_ms:g} ms budget")
    all_values = {"processing_time_ms": processing_ms if processing_ms is not None else "n/a"}
    all_values["budget_ms"] = float(budget_ms)
    all_values.update(values or {})
    return stream_status(
        name,
        errors=errors,
        warnings=warnings,
        values=all_values,
        hardware_id=hardware_id,
        ok_message=f"{processing_ms:.1f} ms" if processing_ms is not None else "OK",
    )


def camera_status(
    name: str,
    counters: Any,
    *,
    error: str | None = None,
    missing: str | None = None,
    values: Mapping[str, Any] | None = None,
    hardware_id: str = "",
) -> Any:
    """Status of one camera stream: ERROR when its last image failed (``error``: bad message,
    missing transform), WARN when the last sweep went without it (``missing``: the sync's
    reason), OK otherwise. ``counters``: its ``CameraSyncCounters`` (all fields become values)."""
    all_values = {k: v for k, v in vars(counters).items()} if counters is not None else {}
    all_values.update(values or {})
    return stream_status(
        name,
        errors=[error] if error else [],
        warnings=[f"missing in the last sweep: {missing}"] if missing else [],
        values=all_values,
        hardware_id=hardware_id,
    )


def diagnostic_array(statuses: Iterable[Any], stamp: Any = None) -> Any:
    """diagnostic_msgs/DiagnosticArray of statuses; stamp: builtin_interfaces/Time (None = 0)."""
    from diagnostic_msgs.msg import DiagnosticArray

    msg = DiagnosticArray()
    if stamp is not None:
        msg.header.stamp = stamp
    msg.status = list(statuses)
    return msg
