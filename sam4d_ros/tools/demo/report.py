"""The demo's report: the recorded outputs read back (:func:`read_outputs`), each prompted
object scored against the ground truth (:func:`score_object`), report.json
(:func:`build_report`) and report.md (:func:`report_markdown`).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sam4d_ros.tools.demo.bag_info import NS_PER_S, STAMP_MATCH_NS, BagInfo, GroundTruth
from sam4d_ros.tools.demo.node_session import NODE
from sam4d_ros.tools.demo.prompts import ScheduledPrompt
from sam4d_ros.tools.demo.quality import CameraProjection, camera_projections, object_quality
from sam4d_ros.tools.demo.run import RunResult

__all__ = [
    "FrameOutputs",
    "FrameScore",
    "ObjectReport",
    "Outputs",
    "build_report",
    "fmt_value",
    "machine_info",
    "read_outputs",
    "report_markdown",
    "score_object",
]


@dataclass
class FrameOutputs:
    """The newest outputs the node published for one sweep (re-published after a prompt)."""

    stamp_ns: int
    objects: Any = None
    labels: dict[str, np.ndarray] = field(default_factory=dict)  # camera -> (H, W) uint16
    overlays: dict[str, np.ndarray] = field(default_factory=dict)  # camera -> (H, W, 3) rgb
    cloud_xy: np.ndarray | None = None  # (N, 2) float32
    cloud_xyz: np.ndarray | None = None  # (N, 3) float32, LiDAR frame
    cloud_labels: np.ndarray | None = None  # (N,) uint32


@dataclass
class Outputs:
    frames: dict[int, FrameOutputs]  # sweep stamp -> outputs
    processing_ms: list[float]
    latency_ms: list[float]
    messages: dict[str, int]


def read_outputs(bag: Path, info: BagInfo) -> Outputs:
    """The recorded outputs per sweep stamp (label images and overlays matched to their sweep by
    stamp: the node copies the input headers)."""
    from rclpy.serialization import deserialize_message

    from sam4d_core.data.sequence_bag import open_bag
    from sam4d_ros.conversions.image import image_to_array
    from sam4d_ros.conversions.pointcloud2 import pointcloud2_to_array
    from sam4d_ros.conversions.stamps import stamp_to_ns
    from sam4d_ros.tools.bag_interop import message_class

    sweeps = np.asarray(info.sweep_stamps_ns, dtype=np.int64)

    def sweep_of(ns: int) -> int | None:
        k = int(np.argmin(np.abs(sweeps - ns)))
        tol = max(STAMP_MATCH_NS, 50_000_000)  # camera images may be stamped off the sweep
        return int(sweeps[k]) if abs(int(sweeps[k]) - ns) <= tol else None

    frames: dict[int, FrameOutputs] = {}
    processing: list[float] = []
    latency: list[float] = []
    counts: dict[str, int] = defaultdict(int)
    cams = {f"{NODE}/{c}/labels": ("labels", c) for c in info.cameras}
    cams.update({f"{NODE}/{c}/overlay": ("overlay", c) for c in info.cameras})
    reader = open_bag(bag)
    try:
        for conn, _t, raw in reader.messages():
            topic = conn.topic
            counts[topic] += 1
            msg = deserialize_message(bytes(raw), message_class(conn.msgtype))
            if topic == f"{NODE}/debug/processing_time_ms":
                processing.append(float(msg.data))
                continue
            if topic == f"{NODE}/debug/pipeline_latency_ms":
                latency.append(float(msg.data))
                continue
            if topic not in cams and topic not in (f"{NODE}/objects", f"{NODE}/points_labeled"):
                continue
            stamp = sweep_of(stamp_to_ns(msg.header.stamp))
            if stamp is None:
                continue
            fo = frames.setdefault(stamp, FrameOutputs(stamp))
            if topic == f"{NODE}/objects":
                fo.objects = msg
            elif topic == f"{NODE}/points_labeled":
                arr = pointcloud2_to_array(msg).reshape(-1)
                fo.cloud_xyz = np.stack([arr["x"], arr["y"], arr["z"]], axis=1).astype(np.float32)
                fo.cloud_xy = fo.cloud_xyz[:, :2]
                fo.cloud_labels = np.asarray(arr["label"], dtype=np.uint32)
            else:
                kind, cam = cams[topic]
                img = np.array(image_to_array(msg), copy=True)
                (fo.labels if kind == "labels" else fo.overlays)[cam] = img
    finally:
        reader.close()
    return Outputs(frames, processing, latency, dict(counts))


@dataclass
class FrameScore:
    """One sweep of one prompted object. status: evaluated, no_output (the node dropped or
    failed the sweep), before_prompt (outputs published before the prompt took effect).
    visible: tracked on the sweep (a mask somewhere and not lost).
    lost: the node reported the object lost (no mask anywhere, or re-prompting found no support
    for it)."""

    frame: int
    stamp_ns: int
    status: str
    visible: bool = False
    presence_score: float | None = None
    image_iou: float | None = None
    lidar_iou: float | None = None
    lost: bool = False


@dataclass
class ObjectReport:
    object_id: int
    prompt: str
    prompt_frame: int
    gt_object_id: int | None
    frames: list[FrameScore]

    @property
    def evaluated(self) -> list[FrameScore]:
        return [f for f in self.frames if f.status == "evaluated"]

    def mean(self, key: str) -> float | None:
        from sam4d_core.evaluation.metrics import mean_or_none

        return mean_or_none(getattr(f, key) for f in self.evaluated)


def score_object(
    p: ScheduledPrompt, info: BagInfo, outputs: Outputs, gt: GroundTruth | None
) -> ObjectReport:
    """Per sweep from the prompt's frame on: is the object there, and its IoU with the ground
    truth object under the click, by the evaluation's rules (``sam4d_core.evaluation.metrics``:
    image IoU pooled over the cameras, LiDAR IoU without ignored points, None where both masks
    are empty)."""
    from sam4d_core.evaluation.metrics import iou_counts, lidar_iou, pooled_iou

    assert p.object_id is not None
    oid = p.object_id
    rows = []
    for i in range(p.frame_index, len(info.sweep_stamps_ns)):
        s = info.sweep_stamps_ns[i]
        fo = outputs.frames.get(s)
        if fo is None or fo.objects is None:
            rows.append(FrameScore(i, s, "no_output"))
            continue
        obj = next((o for o in fo.objects.objects if int(o.id) == oid), None)
        if obj is None:
            rows.append(FrameScore(i, s, "before_prompt"))
            continue
        row = FrameScore(i, s, "evaluated", presence_score=float(obj.presence_score))
        row.lost = bool(getattr(obj, "lost", False))
        # Tracked: a mask somewhere, and not reported lost.
        row.visible = not row.lost and (
            int(obj.num_points) > 0 or any(bool(np.any(lab == oid)) for lab in fo.labels.values())
        )
        if gt is not None and p.gt_object_id is not None:
            g = p.gt_object_id
            f = gt.frame(i)
            counts = [
                iou_counts(lab == oid, c.instance_mask == g)
                for cam, lab in fo.labels.items()
                if (c := f.cameras.get(cam)) is not None
                and c.instance_mask is not None
                and c.instance_mask.shape == lab.shape
            ]
            row.image_iou = pooled_iou(counts)
            if (
                f.point_labels is not None
                and fo.cloud_labels is not None
                and fo.cloud_labels.shape == f.point_labels.shape
            ):
                row.lidar_iou = lidar_iou(fo.cloud_labels == oid, f.point_labels, g)
        rows.append(row)
    return ObjectReport(oid, p.spec.text, p.frame_index, p.gt_object_id, rows)


def _percentiles(values: Sequence[float], scale: float = 1.0) -> dict[str, float | None]:
    if not values:
        return {"count": 0, "p50": None, "p90": None, "p99": None, "max": None}
    a = np.asarray(values, dtype=np.float64) * scale
    return {
        "count": int(a.size),
        "p50": float(np.percentile(a, 50)),
        "p90": float(np.percentile(a, 90)),
        "p99": float(np.percentile(a, 99)),
        "max": float(a.max()),
    }


def machine_info(device: str, threads: int) -> dict[str, Any]:
    """CPU, cores, memory, OS, library versions (no host name)."""
    from importlib.metadata import PackageNotFoundError, version

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_gb = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gb = round(int(line.split()[1]) / 1024**2, 1)
    gpu = None
    if device != "cpu":  # torch is imported only then (seconds of start-up otherwise)
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    torch_version = None
    with contextlib.suppress(PackageNotFoundError):
        torch_version = version("torch")
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": mem_gb,
        "gpu": gpu,
        "os": platform.platform(),
        "python": platform.python_version(),
        "torch": torch_version,
        "device": device,
        "torch_threads": threads,
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def build_report(
    info: BagInfo,
    args: argparse.Namespace,
    result: RunResult,
    outputs: Outputs,
    scores: list[ObjectReport],
    checkpoint: Path,
) -> dict[str, Any]:
    """Everything report.json holds."""
    presence: dict[int, list[float]] = defaultdict(list)
    visible: dict[int, int] = defaultdict(int)
    for fo in outputs.frames.values():
        if fo.objects is None:
            continue
        for o in fo.objects.objects:
            oid = int(o.id)
            presence[oid].append(float(o.presence_score))
            if not bool(getattr(o, "lost", False)) and (
                int(o.num_points) > 0 or any(bool(np.any(lab == oid)) for lab in fo.labels.values())
            ):
                visible[oid] += 1
    c = result.node_counters

    def count(key: str) -> int | None:
        with contextlib.suppress(KeyError, ValueError):
            return int(c[key])
        return None

    processed = sum(1 for fo in outputs.frames.values() if fo.objects is not None)
    cams = list(info.cameras)
    projections = report_projections(info)
    return {
        "bag": str(info.path),
        "checkpoint": str(checkpoint),
        "rate": args.rate,
        "sweep_period_s": float(np.median(np.diff(info.sweep_stamps_ns))) / NS_PER_S
        if len(info.sweep_stamps_ns) > 1
        else None,
        "wall_s": round(result.wall_s, 2),
        "playback_wall_s": round(result.playback_wall_s, 2),
        "sweeps": {
            "in_bag": len(info.sweep_stamps_ns),
            "played": result.sweeps_played,
            "received_by_node": count("sweeps_received"),
            "processed": count("sweeps_processed"),
            "dropped": count("sweeps_dropped"),
            "failed": count("sweeps_failed"),
            "skipped": count("sweeps_skipped"),
            "with_outputs": processed,
        },
        "prompts": [
            {
                "prompt": p.spec.text,
                "source": p.source,
                "what": p.describe(),
                "frame": p.frame_index,
                "stamp_ns": p.stamp_ns,
                "sent_after_s": None if p.sent_wall_s is None else round(p.sent_wall_s, 3),
                "success": p.success,
                "message": p.message,
                "refused_first": p.refused_first,
                "object_id": p.object_id,
                "gt_object_id": p.gt_object_id,
            }
            for p in result.prompts
        ],
        "objects": [
            {
                "object_id": oid,
                "frames_tracked": visible.get(oid, 0),
                "frames_listed": len(presence[oid]),
                "mean_presence_score": float(np.mean(presence[oid])),
                **object_quality(
                    oid, info.sweep_stamps_ns, outputs.frames, cams, projections
                ).summary(cams),
            }
            for oid in sorted(presence)
        ],
        "cross_modal_cameras": sorted(projections),
        "evaluation": [
            {
                "object_id": s.object_id,
                "prompt": s.prompt,
                "prompt_frame": s.prompt_frame,
                "gt_object_id": s.gt_object_id,
                "frames_after_prompt": len(s.frames),
                "frames_evaluated": len(s.evaluated),
                "frames_tracked": sum(1 for f in s.evaluated if f.visible),
                "lost_frames": [f.frame for f in s.evaluated if f.lost],
                "frames_no_output": [f.frame for f in s.frames if f.status == "no_output"],
                "frames_before_prompt": [f.frame for f in s.frames if f.status == "before_prompt"],
                "mean_image_iou": s.mean("image_iou"),
                "mean_lidar_iou": s.mean("lidar_iou"),
                "per_frame": [asdict(f) for f in s.frames],
            }
            for s in scores
        ],
        "latency_ms": {
            "processing": _percentiles(outputs.processing_ms),
            # The node measures it on the bag's clock (/clock): divided by the rate = wall ms.
            "pipeline": _percentiles(outputs.latency_ms, 1.0 / args.rate),
            "pipeline_bag_clock": _percentiles(outputs.latency_ms),
        },
        "outputs_bag": {"path": str(Path(args.out) / "outputs"), "messages": outputs.messages},
        "machine": machine_info(args.device, args.threads),
        "node_exit_code": result.node_exit,
    }


def report_projections(info: BagInfo) -> dict[str, CameraProjection]:
    """The cameras' projections from their first CameraInfo and the bag's static TF."""
    from sam4d_core.data.sequence_bag import TYPESTORE

    infos = {
        name: TYPESTORE.deserialize_cdr(c.first_info, "sensor_msgs/msg/CameraInfo")
        for name, c in info.cameras.items()
        if c.first_info is not None
    }
    return camera_projections(infos, info.lidar_frame, info.static_tf)


def fmt_value(v: float | None, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def objects_markdown(rep: dict[str, Any]) -> list[str]:
    """The report.md section on the objects, from what the node published alone."""
    cams = sorted({c for o in rep["objects"] for c in o["frames_with_mask"] if c != "lidar"})
    proj = rep.get("cross_modal_cameras", [])
    lines = [
        "",
        "## Objects (no ground truth needed)",
        "",
        "Non-empty mask: frames in which the object has LiDAR points / pixels in a camera. "
        "Agreement: share of the object's LiDAR points (among those that project into the "
        "camera) that land inside its own mask there; a mask on the sky or on another object "
        "scores low; n/a: none of its points projects into the camera. Lost: "
        + (rep["objects"][0]["lost_source"] if rep["objects"] else "n/a")
        + ". The presence score stays near 1 on wrong or empty masks: it is no quality signal.",
        "",
        "| id | frames | non-empty LiDAR | "
        + " | ".join(f"non-empty {c}" for c in cams)
        + " | "
        + " | ".join(f"agreement {c}" for c in cams)
        + " | lost frames | lost at the end | mean presence |",
        "|--:|--:|--:|" + "--:|" * (2 * len(cams)) + "--:|---|--:|",
    ]
    for o in rep["objects"]:
        n = o["frames_with_output"]
        m = o["frames_with_mask"]
        ag = o["cross_modal_agreement"]
        lines.append(
            f"| {o['object_id']} | {n} | {m['lidar']} | "
            + " | ".join(f"{m.get(c, 0)}" for c in cams)
            + " | "
            + " | ".join(fmt_value(ag.get(c)) if c in proj else "n/a" for c in cams)
            + f" | {o['frames_lost']} | {'yes' if o['lost'] else 'no'} | "
            f"{o['mean_presence_score']:.3f} |"
        )
    for o in rep["objects"]:
        lines += [
            "",
            f"### Object {o['object_id']} over time (from frame {o['first_frame']})",
            "",
            "| frame | points | " + " | ".join(f"{c} px | {c} agreement" for c in cams)
            + " | presence | lost |",
            "|--:|--:|" + "--:|--:|" * len(cams) + "--:|---|",
        ]  # fmt: skip
        for f in o["over_time"]:
            if f["status"] == "no_output":
                lines.append(f"| {f['frame']} | (no output: dropped or failed) |")
                continue
            cells = " | ".join(
                f"{f['mask_px'].get(c, 0)} | {fmt_value(f['agreement'].get(c), 2)}" for c in cams
            )
            lines.append(
                f"| {f['frame']} | {f['points']} | {cells} | {fmt_value(f['presence_score'])} | "
                f"{'LOST' if f['lost'] else ''} |"
            )
    return lines


def report_markdown(rep: dict[str, Any]) -> str:
    """report.md: the same content as report.json, short."""
    s = rep["sweeps"]
    m = rep["machine"]
    lines = [
        "# sam4d_ros demo report",
        "",
        f"- bag: `{rep['bag']}`; model: `{rep['checkpoint']}`",
        f"- rate {rep['rate']:g}"
        + (
            f" (a sweep every {rep['sweep_period_s'] / rep['rate']:.2f} s of wall time)"
            if rep["sweep_period_s"]
            else ""
        )
        + f"; run {rep['wall_s']:.1f} s, playback {rep['playback_wall_s']:.1f} s",
        f"- sweeps: {s['in_bag']} in the bag, {s['played']} played, "
        f"{s['received_by_node']} received by the node, {s['processed']} processed, "
        f"{s['dropped']} dropped (superseded), {s['failed']} failed, {s['skipped']} skipped",
        f"- machine: {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB"
        + (f", GPU {m['gpu']}" if m["gpu"] else "")
        + f"; device {m['device']}, {m['torch_threads']} torch thread(s); load average "
        f"{m['load_average'][0]}",
        "",
        "## Prompts",
        "",
    ]
    for p in rep["prompts"]:
        state = f"object {p['object_id']}" if p["success"] else "rejected"
        gt = f", ground-truth object {p['gt_object_id']}" if p["gt_object_id"] else ""
        lines.append(f"- `{p['prompt']}` ({p['source']}): {p['what']} -> {state}{gt}")
        lines.append(f"  ({p['message']})")
    lines += objects_markdown(rep)
    for e in rep["evaluation"]:
        lines += [
            "",
            f"## Object {e['object_id']} against the ground truth",
            "",
            f"Ground-truth object {e['gt_object_id']}; {e['frames_evaluated']} of "
            f"{e['frames_after_prompt']} frames from the prompt on evaluated, tracked in "
            f"{e['frames_tracked']}; mean image IoU **{fmt_value(e['mean_image_iou'])}**, "
            f"mean LiDAR IoU **{fmt_value(e['mean_lidar_iou'])}**.",
        ]
        if e.get("lost_frames"):
            lines.append(
                f"Frames where the node reported the object lost (no mask, or no support for "
                f"its predicted segment; absent, not tracked): {e['lost_frames']}."
            )
        if e["frames_no_output"]:
            lines.append(f"Frames without output (dropped or failed): {e['frames_no_output']}.")
        if e["frames_before_prompt"]:
            lines.append(
                f"Frames published before the prompt applied: {e['frames_before_prompt']}."
            )
        if e["gt_object_id"] is None:
            lines.append("(No ground truth for this object: IoU not computed.)")
            continue
        lines += [
            "",
            "| frame | status | presence | image IoU | LiDAR IoU |",
            "|--:|---|--:|--:|--:|",
        ]
        for f in e["per_frame"]:
            status = "lost" if f.get("lost") else f["status"]
            lines.append(
                f"| {f['frame']} | {status} | {fmt_value(f['presence_score'])} | "
                f"{fmt_value(f['image_iou'])} | {fmt_value(f['lidar_iou'])} |"
            )
    lat = rep["latency_ms"]
    lines += [
        "",
        "## Latency (ms, wall clock)",
        "",
        "| | count | p50 | p90 | p99 | max |",
        "|---|--:|--:|--:|--:|--:|",
    ]
    for name, key in (("processing", "processing"), ("pipeline (stamp -> published)", "pipeline")):
        d = lat[key]
        lines.append(
            f"| {name} | {d['count']} | {fmt_value(d['p50'], 1)} | {fmt_value(d['p90'], 1)} | "
            f"{fmt_value(d['p99'], 1)} | {fmt_value(d['max'], 1)} |"
        )
    lines += [
        "",
        "Pipeline latency is measured by the node on the bag's clock (/clock, use_sim_time) and "
        "divided by the rate here.",
        "",
        f"Outputs: `{rep['outputs_bag']['path']}` (rosbag2); video: `overlay.mp4`.",
        "",
    ]
    return "\n".join(lines)
