"""The demo's prompts: ``--prompt`` specs (:func:`parse_prompt`), tied to the bag's frames
(:func:`resolve_prompts`), or the automatic one from the ground truth (:func:`auto_prompt`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from sam4d_ros.tools.demo.bag_info import NS_PER_S, BagInfo, GroundTruth
from sam4d_ros.tools.demo.errors import DemoError

__all__ = [
    "AUTO_PROMPT_CAMERA",
    "PromptSpec",
    "ScheduledPrompt",
    "auto_prompt",
    "parse_prompt",
    "resolve_prompts",
]


AUTO_PROMPT_CAMERA = "front"
_PROMPT_RE_IMAGE = re.compile(r"^(?P<cam>[A-Za-z][A-Za-z0-9_]*):(?P<coords>[^@]*)(@(?P<t>.*))?$")


@dataclass(frozen=True)
class PromptSpec:
    """One ``--prompt``: a click on a camera pixel or a 3D point in the LiDAR frame.

    modality: ``"image"`` or ``"lidar"``. camera: the camera of an image click. point: (u, v)
    pixels or (x, y, z) metres. time_s: seconds into the bag (the frame nearest to it).
    """

    text: str
    modality: str
    point: tuple[float, ...]
    time_s: float = 0.0
    camera: str | None = None


_PROMPT_FORMS = "CAMERA:U,V[@SECONDS] (a pixel) or lidar:X,Y,Z[@SECONDS] (metres, LiDAR frame)"


def parse_prompt(text: str) -> PromptSpec:
    """Parse ``front:320,200@0.3`` or ``lidar:12.0,-1.5,0.4@0.3``; raises ValueError saying what
    is wrong."""
    m = _PROMPT_RE_IMAGE.match(text.strip())
    if m is None:
        raise ValueError(f"invalid prompt {text!r}: expected {_PROMPT_FORMS}")
    target, coords, t = m.group("cam"), m.group("coords"), m.group("t")
    lidar = target.lower() == "lidar"
    want = 3 if lidar else 2
    parts = [p.strip() for p in coords.split(",")]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        raise ValueError(
            f"invalid prompt {text!r}: coordinates {coords!r} are not {want} numbers "
            f"separated by commas ({_PROMPT_FORMS})"
        ) from None
    if len(values) != want:
        what = "x, y, z in metres" if lidar else "u, v in pixels"
        raise ValueError(
            f"invalid prompt {text!r}: {target} needs {want} coordinates ({what}), "
            f"got {len(values)}"
        )
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"invalid prompt {text!r}: coordinates must be finite")
    time_s = 0.0
    if t is not None:
        try:
            time_s = float(t)
        except ValueError:
            raise ValueError(
                f"invalid prompt {text!r}: time {t!r} after '@' is not a number of seconds"
            ) from None
        if not (math.isfinite(time_s) and time_s >= 0.0):
            raise ValueError(f"invalid prompt {text!r}: time must be >= 0 s, got {t}")
    if lidar:
        return PromptSpec(text, "lidar", values, time_s)
    return PromptSpec(text, "image", values, time_s, camera=target)


@dataclass
class ScheduledPrompt:
    """A prompt tied to its frame; filled in as the demo runs."""

    spec: PromptSpec
    frame_index: int
    stamp_ns: int
    source: str  # "--prompt" or "auto"
    gt_object_id: int | None = None  # the ground-truth object under the click, when known
    object_id: int | None = None  # the node's id (AddPrompts answer)
    success: bool | None = None
    message: str = ""
    sent_wall_s: float | None = None  # seconds after playback started
    refused_first: str | None = None  # the node's answer to a first attempt it refused

    def describe(self) -> str:
        s = self.spec
        if s.modality == "image":
            where = f"click ({s.point[0]:.1f}, {s.point[1]:.1f}) px in camera {s.camera}"
        else:
            where = f"LiDAR point ({s.point[0]:.2f}, {s.point[1]:.2f}, {s.point[2]:.2f}) m"
        return f"{where} on frame {self.frame_index}"


def resolve_prompts(specs: Sequence[PromptSpec], info: BagInfo) -> list[ScheduledPrompt]:
    """Tie each ``--prompt`` to its frame; raises DemoError for a prompt that cannot apply to
    this bag (unknown camera, pixel outside the image, time past the end)."""
    out = []
    duration = info.duration_ns / NS_PER_S
    for s in specs:
        if s.time_s > duration + 1e-9:
            raise DemoError(
                f"--prompt {s.text!r}: {s.time_s:g} s is past the end of the bag "
                f"({duration:.3f} s long)"
            )
        if s.modality == "image":
            cam = info.cameras.get(s.camera or "")
            if cam is None:
                known = ", ".join(info.cameras) or "none"
                raise DemoError(
                    f"--prompt {s.text!r}: unknown camera {s.camera!r} (the bag's cameras: "
                    f"{known}; use lidar:X,Y,Z for a 3D point)"
                )
            u, v = s.point
            if cam.width and not (0 <= u < cam.width and 0 <= v < cam.height):
                raise DemoError(
                    f"--prompt {s.text!r}: pixel ({u:g}, {v:g}) is outside camera {cam.name}'s "
                    f"{cam.width}x{cam.height} image"
                )
        i = info.frame_at(s.time_s)
        out.append(ScheduledPrompt(s, i, info.sweep_stamps_ns[i], "--prompt"))
    return out


def auto_prompt(info: BagInfo, gt: GroundTruth) -> ScheduledPrompt:
    """The evaluation's one-click image prompt (``sam4d_core.evaluation``: the pixel deepest inside
    the ground-truth mask, on the object's first frame, in the camera where it is largest) of the
    object ``pick_demo_object`` chooses for camera ``front`` (or the bag's first camera)."""
    from sam4d_core.evaluation import make_first_frame_prompt, pick_demo_object
    from sam4d_core.evaluation.first_frame_prompts import first_appearance
    from sam4d_core.evaluation.streaming_eval import DEFAULT_MIN_PIXELS

    if not info.cameras:
        raise DemoError("no --prompt given and the bag has no camera for the automatic prompt")
    camera = AUTO_PROMPT_CAMERA if AUTO_PROMPT_CAMERA in info.cameras else next(iter(info.cameras))
    sequence = gt.sequence()
    oid = pick_demo_object(sequence, camera)
    if oid is None:
        raise DemoError(
            f"no object of the ground truth qualifies for the automatic prompt in camera "
            f"{camera}; give one with --prompt"
        )
    i = first_appearance(sequence, oid, "img", min_pixels=DEFAULT_MIN_PIXELS)
    rec = (
        None if i is None else make_first_frame_prompt(sequence.frames[i], oid, "1click", "img", i)
    )
    if rec is None or rec.points is None or not len(rec.points):
        raise DemoError(f"ground-truth object {oid} has no mask to click on")
    u, v = (float(x) for x in rec.points[0])
    cam = str(rec.camera)
    t = (info.sweep_stamps_ns[i] - info.start_ns) / NS_PER_S
    spec = PromptSpec(f"{cam}:{u:g},{v:g}@{t:g}", "image", (u, v), t, cam)
    return ScheduledPrompt(spec, i, info.sweep_stamps_ns[i], "auto", gt_object_id=int(oid))
