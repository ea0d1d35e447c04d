"""A synchronized sweep (messages) + TF -> the ``sam4d_core`` ``Frame`` the tracker consumes.

What it does per sweep (``FrameBuilder.build``):
- LiDAR: PointCloud2 -> (M, 4) float32 x, y, z, intensity of the finite points (intensity 0 when
  the cloud has none). ``BuiltFrame.valid_index`` maps them back onto the full input cloud
  (organized clouds and NaN points included), so outputs are written onto the cloud as received.
- Ego pose ``world_from_lidar = T_fixed_lidar`` at the sweep stamp from TF (interpolated by the
  buffer). No ``fixed_frame`` (or the LiDAR frame itself) means no odometry: identity. When TF has
  no pose, ``pose_fallback`` decides: ``error`` (the sweep fails), ``hold`` (the last good pose:
  short TF outages do not stop tracking) or ``identity``.
- Per camera: image -> RGB (Image any encoding or JPEG/PNG CompressedImage); CameraInfo ->
  intrinsics (cached with the undistortion maps). Distorted images (non-zero D or non-identity R)
  are undistorted, then K is the rectified camera matrix (P[:, :3], like image_proc); cameras
  marked ``rectified`` are taken as they are with that K. Extrinsics ``cam_from_lidar`` from TF,
  tried in this order: (1) through the fixed frame, ``T_cam_fixed(t_image) @ T_fixed_lidar
  (t_sweep)``, which compensates the ego motion between the image and the sweep stamps (1 m at
  20 m/s and 50 ms); (2) ``T_cam_lidar`` directly at the image stamp, then at the sweep stamp
  (static mounting); (3) the extrinsics given as parameters. The rectification rotation R is
  applied to the extrinsics of undistorted images (the rectified camera is rotated by R).

Errors name the stream and what is wrong: ``BadMessageError`` (topic and reason) and
``MissingTransformError`` (target and source frames, stamp and the TF error). A LiDAR or ego-pose
error fails the sweep (``build`` raises); a camera error drops only that camera
(``BuiltFrame.camera_errors``), so the node reports it per stream and the frame goes on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sam4d_core.codecs.camera import CameraModel
from sam4d_core.codecs.errors import CodecError, ImageSizeError
from sam4d_core.codecs.transform import validate_transform
from sam4d_core.data.sequence import CameraFrame, Frame
from sam4d_core.geometry.tf_buffer import TfBuffer, TfLookupError
from sam4d_ros.conversions.camera_info import CameraModelCache
from sam4d_ros.conversions.image import compressed_image_to_rgb, image_to_rgb
from sam4d_ros.conversions.pointcloud2 import pointcloud2_to_points
from sam4d_ros.conversions.stamps import stamp_to_ns
from sam4d_ros.sync import SyncedSweep

__all__ = [
    "POSE_FALLBACKS",
    "BadMessageError",
    "BuiltCamera",
    "BuiltFrame",
    "CameraSource",
    "FrameBuildError",
    "FrameBuilder",
    "FrameBuilderConfig",
    "MissingTransformError",
    "cloud_to_points",
]

_NS = 1_000_000_000
POSE_FALLBACKS = ("error", "hold", "identity")


class FrameBuildError(Exception):
    """A sweep or one of its cameras could not be turned into model input.

    stream: "lidar" (the whole sweep fails) or the camera name (only that camera is dropped).
    """

    def __init__(self, stream: str, message: str) -> None:
        super().__init__(message)
        self.stream = stream


class BadMessageError(FrameBuildError):
    """A message is malformed or inconsistent; ``topic`` and ``reason`` say which and why."""

    def __init__(self, stream: str, topic: str, reason: str) -> None:
        super().__init__(stream, f"{topic}: {reason}")
        self.topic = topic
        self.reason = reason


class MissingTransformError(FrameBuildError):
    """TF cannot provide ``T_target_source`` at ``stamp_ns`` (and no fallback applied)."""

    def __init__(
        self, stream: str, target_frame: str, source_frame: str, stamp_ns: int | None, reason: str
    ) -> None:
        when = "latest" if stamp_ns is None else f"t={stamp_ns // _NS}.{stamp_ns % _NS:09d} s"
        super().__init__(
            stream,
            f"no transform '{target_frame}' <- '{source_frame}' at {when}: {reason}",
        )
        self.target_frame = target_frame
        self.source_frame = source_frame
        self.stamp_ns = stamp_ns
        self.reason = reason


@dataclass(frozen=True)
class CameraSource:
    """How to read one camera.

    name: camera name. image_topic / camera_info_topic: for error messages.
    rectified: the images are already rectified (image_rect): no undistortion, K = P[:, :3].
    frame_id: the camera's optical frame; "" = the image header's (then the CameraInfo's).
    cam_from_lidar: (4, 4) extrinsics from parameters (camera optical <- LiDAR), used when TF has
        none; None = TF only.
    """

    name: str
    image_topic: str = ""
    camera_info_topic: str = ""
    rectified: bool = False
    frame_id: str = ""
    cam_from_lidar: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.cam_from_lidar is not None:
            object.__setattr__(self, "cam_from_lidar", validate_transform(self.cam_from_lidar))


@dataclass(frozen=True)
class FrameBuilderConfig:
    """lidar_topic: for error messages. cameras: the cameras (by name).
    fixed_frame: world frame of the ego pose; "" = none (identity pose).
    lidar_frame: "" = the cloud's header.frame_id.
    pose_fallback: "error", "hold" or "identity" (module docstring).
    motion_compensation: try extrinsics through the fixed frame first (module docstring).
    check_finite: scan for NaN points even when the cloud says is_dense (drivers get it wrong).
    """

    lidar_topic: str = ""
    cameras: Sequence[CameraSource] = ()
    fixed_frame: str = "odom"
    lidar_frame: str = ""
    pose_fallback: str = "error"
    motion_compensation: bool = True
    check_finite: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "cameras", tuple(self.cameras))
        if self.pose_fallback not in POSE_FALLBACKS:
            raise ValueError(
                f"pose_fallback must be one of {POSE_FALLBACKS}, got {self.pose_fallback!r}"
            )
        names = [c.name for c in self.cameras]
        if len(set(names)) != len(names):
            raise ValueError(f"camera names must be unique, got {names}")

    def camera(self, name: str) -> CameraSource:
        for c in self.cameras:
            if c.name == name:
                return c
        raise KeyError(f"unknown camera '{name}' (configured: {[c.name for c in self.cameras]})")


@dataclass
class BuiltCamera:
    """What the outputs need of one camera besides the ``CameraFrame``.

    header: the input image's header (outputs copy it). frame_id: optical frame used.
    model: the CameraModel of the received image. undistorted: the frame's image was remapped
    (the frame's image is then new memory; otherwise it may alias the message's data).
    extrinsics_source: "tf_fixed_frame", "tf" or "parameters".
    """

    name: str
    header: Any
    frame_id: str
    model: CameraModel
    undistorted: bool
    extrinsics_source: str


@dataclass
class BuiltFrame:
    """A ``Frame`` plus what is needed to publish results on the input messages.

    frame: the tracker's input. cloud: the input PointCloud2.
    lidar_frame: TF frame of the points. stamp_ns: the sweep stamp.
    valid_index: (M,) int64 flat (row-major) indices into the input cloud of ``frame.points``.
    num_input_points: height * width of the input cloud.
    cameras: camera name -> BuiltCamera for the cameras in ``frame.cameras``.
    camera_errors: camera name -> error for the synced cameras that had to be dropped.
    missing: camera name -> why sync had no image (copied from the SyncedSweep).
    pose_source: "tf", "held", "identity" or "no_fixed_frame". warnings: non-fatal problems.
    """

    frame: Frame
    cloud: Any
    lidar_frame: str
    stamp_ns: int
    valid_index: np.ndarray
    num_input_points: int
    cameras: dict[str, BuiltCamera] = field(default_factory=dict)
    camera_errors: dict[str, FrameBuildError] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)
    pose_source: str = "tf"
    warnings: list[str] = field(default_factory=list)

    @property
    def cameras_used(self) -> list[str]:
        return list(self.frame.cameras)


def cloud_to_points(
    msg: Any, topic: str = "", check_finite: bool = True
) -> tuple[np.ndarray, np.ndarray, int]:
    """PointCloud2 -> ((M, 4) float32 x, y, z, intensity of the finite points, (M,) int64 their
    flat indices in the cloud, N = height * width). Raises BadMessageError (stream "lidar")."""
    try:
        lp = pointcloud2_to_points(msg, check_finite=check_finite)
    except CodecError as e:
        raise BadMessageError("lidar", topic or "PointCloud2", str(e)) from None
    index = np.flatnonzero(lp.valid).astype(np.int64)
    points = np.empty((index.size, 4), np.float32)
    if index.size == lp.num_points:  # dense: skip the gather
        points[:, :3] = lp.xyz
        points[:, 3] = 0.0 if lp.intensity is None else lp.intensity
    else:
        points[:, :3] = lp.xyz[index]
        points[:, 3] = 0.0 if lp.intensity is None else lp.intensity[index]
    if not np.isfinite(points[:, 3]).all():
        # A NaN intensity would poison the model's features; the point itself is fine.
        np.nan_to_num(points[:, 3], copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    return points, index, lp.num_points


def _rect_rotation(model: CameraModel) -> np.ndarray:
    out = np.eye(4)
    out[:3, :3] = model.R
    return out


class FrameBuilder:
    """Builds ``BuiltFrame``s from ``SyncedSweep``s; see the module docstring.

    tf: the node's TF buffer (read only here). camera_models: shared cache of CameraInfo models.
    Not thread-safe (one worker calls ``build``); the TF buffer and the cache are.
    """

    def __init__(
        self,
        config: FrameBuilderConfig,
        tf: TfBuffer,
        camera_models: CameraModelCache | None = None,
    ) -> None:
        self.config = config
        self.tf = tf
        self.camera_models = camera_models or CameraModelCache()
        self._last_pose: np.ndarray | None = None
        self._next_index = 0

    def reset(self) -> None:
        """Forget the held pose and restart frame indices (after a time jump / tracker reset)."""
        self._last_pose = None
        self._next_index = 0

    # ------------------------------------------------------------------ whole sweep

    def build(self, sweep: SyncedSweep) -> BuiltFrame:
        """Frame of a synced sweep. Raises FrameBuildError for the LiDAR or the ego pose; camera
        problems land in ``camera_errors``."""
        images = {name: (m.image, m.info) for name, m in sweep.cameras.items()}
        built = self.build_from(sweep.cloud, images, stamp_ns=sweep.stamp_ns)
        built.missing = dict(sweep.missing)
        return built

    def build_from(
        self,
        cloud: Any,
        images: Mapping[str, tuple[Any, Any | None]],
        stamp_ns: int | None = None,
    ) -> BuiltFrame:
        """Frame of a cloud and, per camera, (Image or CompressedImage, CameraInfo or None)."""
        cfg = self.config
        stamp = stamp_to_ns(cloud.header.stamp) if stamp_ns is None else int(stamp_ns)
        lidar_frame = _strip(cfg.lidar_frame or str(cloud.header.frame_id))
        if not lidar_frame:
            raise BadMessageError(
                "lidar", cfg.lidar_topic or "PointCloud2",
                "header.frame_id is empty and no lidar_frame parameter is set",
            )  # fmt: skip
        points, index, n_in = cloud_to_points(cloud, cfg.lidar_topic, cfg.check_finite)
        warnings: list[str] = []
        pose, pose_source = self._ego_pose(lidar_frame, stamp, warnings)
        frame = Frame(
            timestamp=stamp / _NS,
            points=points,
            cameras={},
            world_from_lidar=pose,
            index=self._next_index,
        )
        built = BuiltFrame(
            frame=frame,
            cloud=cloud,
            lidar_frame=lidar_frame,
            stamp_ns=stamp,
            valid_index=index,
            num_input_points=n_in,
            pose_source=pose_source,
            warnings=warnings,
        )
        # Configuration order, so that outputs list cameras the same way every sweep.
        for source in cfg.cameras:
            if source.name not in images:
                continue
            image_msg, info_msg = images[source.name]
            try:
                cam_frame, cam_built = self.build_camera(
                    source, image_msg, info_msg, lidar_frame, stamp, pose, pose_source
                )
            except FrameBuildError as e:
                built.camera_errors[source.name] = e
                continue
            frame.cameras[source.name] = cam_frame
            built.cameras[source.name] = cam_built
        unknown = sorted(set(images) - {c.name for c in cfg.cameras})
        if unknown:
            warnings.append(f"ignored images of unconfigured cameras {unknown}")
        self._next_index += 1
        return built

    # ------------------------------------------------------------------ pieces

    def _ego_pose(
        self, lidar_frame: str, stamp: int, warnings: list[str]
    ) -> tuple[np.ndarray, str]:
        fixed = _strip(self.config.fixed_frame)
        if not fixed or fixed == lidar_frame:
            return np.eye(4), "no_fixed_frame"
        try:
            pose = self.tf.lookup(fixed, lidar_frame, stamp)
        except TfLookupError as e:
            fallback = self.config.pose_fallback
            if fallback == "hold" and self._last_pose is not None:
                warnings.append(f"ego pose held from the previous sweep: {e}")
                return self._last_pose.copy(), "held"
            if fallback == "identity":
                warnings.append(f"ego pose set to identity: {e}")
                return np.eye(4), "identity"
            raise MissingTransformError("lidar", fixed, lidar_frame, stamp, str(e)) from None
        self._last_pose = pose
        return pose, "tf"

    def build_camera(
        self,
        source: CameraSource,
        image_msg: Any,
        info_msg: Any | None,
        lidar_frame: str,
        sweep_stamp_ns: int,
        world_from_lidar: np.ndarray,
        pose_source: str = "tf",
    ) -> tuple[CameraFrame, BuiltCamera]:
        """One camera of a sweep; raises BadMessageError or MissingTransformError (stream = the
        camera's name)."""
        name = source.name
        image_topic = source.image_topic or f"camera '{name}' image"
        info_topic = source.camera_info_topic or f"camera '{name}' camera_info"
        if info_msg is None:
            raise BadMessageError(name, info_topic, "no CameraInfo received yet")
        try:
            model = self.camera_models.get(name, info_msg)
        except CodecError as e:
            raise BadMessageError(name, info_topic, str(e)) from None
        # The size is checked before decoding (from the JPEG / PNG header): a few bytes claiming
        # 16000x16000 pixels would otherwise be decoded in full (seconds, gigabytes).
        expected = (model.height, model.width)
        try:
            if hasattr(image_msg, "format") and not hasattr(image_msg, "encoding"):
                rgb = compressed_image_to_rgb(image_msg, expected)
            else:
                rgb = image_to_rgb(image_msg, expected)
        except ImageSizeError as e:
            if e.declared is None:
                raise BadMessageError(name, image_topic, str(e)) from None
            (h, w), how = e.declared, ("" if hasattr(image_msg, "encoding") else " (its header)")
            raise BadMessageError(
                name,
                image_topic,
                f"image is {w}x{h}{how} but {info_topic} says {model.width}x{model.height}; "
                "refused without decoding",
            ) from None
        except CodecError as e:
            raise BadMessageError(name, image_topic, str(e)) from None
        if rgb.shape[:2] != (model.height, model.width):  # checked above; kept as a safety net
            raise BadMessageError(
                name,
                image_topic,
                f"image is {rgb.shape[1]}x{rgb.shape[0]} but {info_topic} says "
                f"{model.width}x{model.height}",
            )
        undistort = not source.rectified and model.needs_undistortion
        if undistort:
            try:
                rgb = model.undistort(rgb)
            except CodecError as e:
                raise BadMessageError(name, info_topic, str(e)) from None
            intrinsics = np.array(model.rectified_K, dtype=np.float64)
        elif source.rectified:
            intrinsics = np.array(model.rectified_K, dtype=np.float64)
        else:
            intrinsics = np.array(model.K, dtype=np.float64)
        image_stamp = stamp_to_ns(image_msg.header.stamp)
        cam_frame_id = _strip(
            source.frame_id
            or str(image_msg.header.frame_id)
            or str(getattr(getattr(info_msg, "header", None), "frame_id", "") or "")
        )
        cam_from_lidar, how = self._extrinsics(
            source, cam_frame_id, lidar_frame, image_stamp, sweep_stamp_ns,
            world_from_lidar, pose_source,
        )  # fmt: skip
        if undistort or source.rectified:
            # The rectified image is that of a camera rotated by R (image_geometry's convention).
            cam_from_lidar = _rect_rotation(model) @ cam_from_lidar
        return (
            CameraFrame(
                name=name,
                image=rgb,
                intrinsics=intrinsics,
                cam_from_lidar=cam_from_lidar,
                timestamp=image_stamp / _NS,
            ),
            BuiltCamera(
                name=name,
                header=image_msg.header,
                frame_id=cam_frame_id,
                model=model,
                undistorted=undistort,
                extrinsics_source=how,
            ),
        )

    def _extrinsics(
        self,
        source: CameraSource,
        cam_frame: str,
        lidar_frame: str,
        image_stamp: int,
        sweep_stamp: int,
        world_from_lidar: np.ndarray,
        pose_source: str,
    ) -> tuple[np.ndarray, str]:
        tried: list[str] = []
        if cam_frame:
            fixed = _strip(self.config.fixed_frame)
            if (
                self.config.motion_compensation
                and pose_source == "tf"
                and fixed
                and fixed != lidar_frame
            ):
                try:
                    cam_from_fixed = self.tf.lookup(cam_frame, fixed, image_stamp)
                    return cam_from_fixed @ world_from_lidar, "tf_fixed_frame"
                except TfLookupError as e:
                    tried.append(f"through '{fixed}' at the image stamp: {e}")
            for stamp, what in ((image_stamp, "image"), (sweep_stamp, "sweep")):
                try:
                    return self.tf.lookup(cam_frame, lidar_frame, stamp), "tf"
                except TfLookupError as e:
                    tried.append(f"at the {what} stamp: {e}")
                if stamp == sweep_stamp:
                    break
        else:
            tried.append("the image has no header.frame_id and no frame_id parameter is set")
        if source.cam_from_lidar is not None:
            return np.array(source.cam_from_lidar, dtype=np.float64), "parameters"
        raise MissingTransformError(
            source.name,
            cam_frame or "<camera frame unknown>",
            lidar_frame,
            image_stamp,
            "; ".join(dict.fromkeys(tried)) + "; no extrinsics parameter for this camera",
        )


def _strip(frame: str) -> str:
    # tf2 ignores a leading slash (ROS 1 style frame ids); so do we, for comparisons.
    frame = str(frame)
    return frame[1:] if frame.startswith("/") else frame
