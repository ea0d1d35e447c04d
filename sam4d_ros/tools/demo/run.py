"""One run of the demo: start the node, play the bag, send the prompts, record the outputs
(:func:`run`), and wait until the node is done.
"""

from __future__ import annotations

import argparse
import contextlib
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sam4d_ros.parameters import write_params_file
from sam4d_ros.tools.demo.bag_info import NS_PER_S, STAMP_MATCH_NS, BagInfo, GroundTruth
from sam4d_ros.tools.demo.errors import DemoError
from sam4d_ros.tools.demo.node_session import (
    NODE,
    NODE_NAME,
    DemoSession,
    NodeProcess,
    node_parameters,
    prompt_message,
)
from sam4d_ros.tools.demo.prompts import ScheduledPrompt

__all__ = ["RunResult", "output_topics", "run", "say"]


# Outputs of a sweep arrive within this much of the sweep's outputs being due; then the node is
# taken to be idle (seconds of wall time, added to the slowest processing time seen).
_IDLE_GRACE_S = 5.0
_READY_TIMEOUT_S = 180.0


@dataclass
class RunResult:
    """What happened while the bag played (the report adds the analysis of the outputs)."""

    wall_s: float
    playback_wall_s: float
    sweeps_played: int
    node_counters: dict[str, str]
    prompts: list[ScheduledPrompt]
    node_exit: int | None


def output_topics(info: BagInfo) -> list[str]:
    """The node's outputs the demo records."""
    out = [
        f"{NODE}/points_labeled",
        f"{NODE}/objects",
        f"{NODE}/markers",
        f"{NODE}/debug/processing_time_ms",
        f"{NODE}/debug/pipeline_latency_ms",
        "/diagnostics",
    ]
    for c in info.cameras:
        out += [f"{NODE}/{c}/labels", f"{NODE}/{c}/overlay"]
    return out


def say(text: str) -> None:
    print(f"[demo] {text}", flush=True)


def run(
    info: BagInfo,
    prompts: list[ScheduledPrompt],
    args: argparse.Namespace,
    out: Path,
    gt: GroundTruth | None,
    stop: threading.Event,
) -> RunResult:
    """Start the node, play the bag, prompt, record; returns when the node has processed the
    last sweep it will process (or ``stop`` is set)."""
    import rclpy
    from rclpy.context import Context
    from rclpy.signals import SignalHandlerOptions

    from sam4d_ros.tools.play import BagPlayer
    from sam4d_ros.tools.record import BagRecorder

    t0 = time.monotonic()
    params = write_params_file(out / "node_params.yaml", node_parameters(info, args))
    files = [params] + ([Path(args.params_file)] if args.params_file else [])
    node = NodeProcess(files, out / "node.log")
    context = Context()
    rclpy.init(context=context, signal_handler_options=SignalHandlerOptions.NO)
    session: DemoSession | None = None
    recorder: BagRecorder | None = None
    player: BagPlayer | None = None
    try:
        session = DemoSession(context, info)
        say(f"starting {NODE_NAME} (log: {out / 'node.log'})")
        deadline = time.monotonic() + _READY_TIMEOUT_S
        while not session.add_client.wait_for_service(timeout_sec=0.2):
            if not node.alive():
                raise DemoError(f"{NODE_NAME} exited at start-up:\n{node.log_tail()}")
            if stop.is_set():
                raise KeyboardInterrupt
            if time.monotonic() > deadline:
                raise DemoError(
                    f"{NODE_NAME} not ready after {_READY_TIMEOUT_S:g} s:\n{node.log_tail()}"
                )
        say(f"{NODE_NAME} ready after {time.monotonic() - t0:.1f} s")
        topics = output_topics(info)
        recorder = BagRecorder(
            out / "outputs", topics=topics, context=context, overwrite=True, log=None
        ).start()
        if not recorder.wait_until_subscribed(topics, timeout=30.0):
            missing = sorted(set(topics) - set(recorder.subscribed))
            raise DemoError(f"the node does not publish {', '.join(missing)}")
        player = BagPlayer(
            info.path,
            context=context,
            rate=args.rate,
            clock_hz=100.0,
            topics=info.played_topics,
            remap=info.remap,
            wait_for_subscribers=1,
            wait_topics=info.sensor_topics + info.tf_topics,
            wait_timeout_s=60.0,
            log=None,
        )
        session.prime_camera_info(info)
        # The node computes an output only for matched subscribers: give the recorder's and our
        # subscriptions time to be matched on its side too.
        time.sleep(1.0)
        say(
            f"playing {info.path} ({len(info.sweep_stamps_ns)} sweeps, "
            f"{info.duration_ns / NS_PER_S:.1f} s) at rate {args.rate:g}"
        )
        player.start()
        t_play = time.monotonic()
        _send_prompts(prompts, session, player, stop, t_play)
        while player.running:
            if stop.is_set():
                raise KeyboardInterrupt
            if not node.alive():
                raise DemoError(f"{NODE_NAME} exited while the bag played:\n{node.log_tail()}")
            time.sleep(0.05)
        summary = player.wait()
        playback_wall = time.monotonic() - t_play
        _wait_idle(session, info, stop)
        # Counters as of after the last sweep: one more diagnostics message.
        seen = session.diagnostics_wall or 0.0
        wait_until = time.monotonic() + 3.0
        while (session.diagnostics_wall or 0.0) <= seen and time.monotonic() < wait_until:
            time.sleep(0.05)
        counters = session.processing_values()
        player.close()
        player = None
        _wait_recorder_quiet(recorder)
        recorder.stop()
        recorder = None
        played = summary.messages.get(info.lidar_topic, 0)
    finally:
        if player is not None:
            player.close()
        if recorder is not None:
            with contextlib.suppress(Exception):
                recorder.stop()
        if session is not None:
            session.close()
        code = node.stop()
        rclpy.try_shutdown(context=context)
    for p in prompts:
        if p.gt_object_id is None and gt is not None:
            s = p.spec
            if s.modality == "image":
                p.gt_object_id = gt.object_at_pixel(p.frame_index, str(s.camera), *s.point[:2])
            else:
                p.gt_object_id = gt.object_at_point(p.frame_index, s.point)
    return RunResult(
        wall_s=time.monotonic() - t0,
        playback_wall_s=playback_wall,
        sweeps_played=played,
        node_counters=counters,
        prompts=prompts,
        node_exit=code,
    )


def _send_prompts(
    prompts: list[ScheduledPrompt],
    session: DemoSession,
    player: Any,
    stop: threading.Event,
    t_play: float,
) -> None:
    """Send each prompt as soon as its frame has been played (the node applies a prompt for a
    frame it has not stepped yet when it does, else on that frame in its buffer, and carries the
    object forward). A prompt refused because the node has not seen the frame's camera yet is
    sent again once the node has published outputs for the frame; its answer then stands."""
    for p in sorted(prompts, key=lambda p: p.stamp_ns):
        keys = ["lidar"] + ([str(p.spec.camera)] if p.spec.modality == "image" else [])
        _wait_for(
            lambda p=p, keys=keys: all(session.input_seen(k, p.stamp_ns) for k in keys),
            player,
            stop,
        )
        p.sent_wall_s = time.monotonic() - t_play
        answer = session.call_add_prompts([prompt_message(p)])
        if not answer.success:
            p.refused_first = str(answer.message)
            _wait_for(lambda p=p: session.output_seen(p.stamp_ns), player, stop)
            p.sent_wall_s = time.monotonic() - t_play
            answer = session.call_add_prompts([prompt_message(p)])
        p.success, p.message = bool(answer.success), str(answer.message)
        p.object_id = int(answer.object_ids[0]) if answer.success and answer.object_ids else None
        state = f"object {p.object_id}" if p.success else "REJECTED"
        say(f"prompt {p.spec.text!r} ({p.describe()}): {state}: {p.message}")


def _wait_for(predicate: Any, player: Any, stop: threading.Event) -> None:
    """Until ``predicate()`` holds or the playback has ended; KeyboardInterrupt on ``stop``."""
    while not predicate():
        if stop.is_set():
            raise KeyboardInterrupt
        if not player.running:
            return
        time.sleep(0.005)


def _wait_recorder_quiet(recorder: Any, quiet_s: float = 0.5, timeout_s: float = 5.0) -> None:
    """Until the recorder's per-topic counts stop changing: our session saw the last outputs,
    but the recorder is another subscriber and its last messages may still be in flight."""
    deadline = time.monotonic() + timeout_s
    last = dict(recorder.messages)
    quiet_until = time.monotonic() + quiet_s
    while time.monotonic() < deadline:
        time.sleep(0.02)
        now = dict(recorder.messages)
        if now != last:
            last, quiet_until = now, time.monotonic() + quiet_s
        elif time.monotonic() >= quiet_until:
            return


def _wait_idle(session: DemoSession, info: BagInfo, stop: threading.Event) -> None:
    """Until the node has published outputs for the last sweep, or nothing came for a while
    (it dropped the last sweeps or failed them)."""
    last = info.sweep_stamps_ns[-1]
    deadline = time.monotonic() + 120.0
    while not stop.is_set() and time.monotonic() < deadline:
        newest = session.newest_output()
        if newest is not None and newest >= last - STAMP_MATCH_NS:
            return
        since = session.last_output_wall
        if since is not None and time.monotonic() - since > _IDLE_GRACE_S:
            return
        time.sleep(0.02)
