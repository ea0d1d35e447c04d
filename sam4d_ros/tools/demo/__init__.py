"""The main job (``make demo``): the node on a recording, prompted by a script, and a report.

    python -m sam4d_ros.tools.demo [--bag DIR] [--prompt SPEC ...] [--rate R] [--out DIR]
        [--checkpoint FILE] [--device DEV] [--threads N] [--params-file FILE]
        [--remap FROM:=TO ...]

What it does, as a user would by hand:

1. starts ``sam4d_node`` in its own process (``python -m sam4d_ros.node``: the real node over real
   DDS) with the bundled default model unless ``--checkpoint`` says otherwise, configured for the
   bag's LiDAR and cameras, and waits until its services are available;
2. plays the bag (default: the bundled recording ``test/data/synthetic_drive``) with
   :class:`~sam4d_ros.tools.play.BagPlayer` at ``--rate`` and records the node's outputs with
   :class:`~sam4d_ros.tools.record.BagRecorder` into ``<out>/outputs`` (a rosbag2, MCAP);
3. sends the prompts through ``~/add_prompts``, each stamped with its frame, as soon as the player
   has sent that frame (the node applies a prompt on a frame it has not stepped yet when it steps
   it, else on that frame in its 2 s buffer, and carries the object forward; a prompt refused
   because the node lacks the frame yet is sent again once the node has published the frame).
   ``--prompt`` takes ``CAMERA:U,V[@T]`` (a click on pixel (U, V) of a camera) or
   ``lidar:X,Y,Z[@T]`` (a 3D point in the LiDAR frame), T = seconds into the bag (default 0: the
   first sweep); one object per ``--prompt``. Without ``--prompt`` on a bag with ground truth, the
   object ``sam4d_core.evaluation.pick_demo_object`` picks for camera ``front`` (a fixed rule) gets
   the evaluation's one-click prompt: the pixel deepest inside its mask, on its first frame.
   Each camera's first CameraInfo is published once before playback (as a camera driver does
   before its first image; in the bag it follows the image, and the first sweep would go on
   without that camera);
4. writes ``<out>/report.md`` and ``<out>/report.json``: the objects tracked, per-frame IoU of each
   prompted object against the bag's ground truth when it has some (image IoU pooled over the
   cameras, LiDAR IoU without ignored points; frames where both masks are empty do not count),
   processing time and pipeline latency percentiles, sweeps played / processed / dropped, the
   rate and the machine; and ``<out>/overlay.mp4``: per processed sweep the camera overlays side
   by side and a bird's-eye view of the labeled cloud, in the node's label colours.

Time: the player publishes ``/clock`` (bag time) and the node runs with ``use_sim_time``. The
bag's stamps are from the time of recording, so on the wall clock the node's pipeline latency
(now - sweep stamp) would be the age of the recording; on the bag's clock it is the real latency
times the rate. The report gives it divided by the rate (wall milliseconds); processing time is
measured on the wall clock by the node. Everything else (outputs, prompts, frame buffer) works on
header stamps and is the same either way.

Rate: the node steps on the newest sweep and drops older waiting ones by design (live operation).
The offline evaluation processes every sweep, so the IoU is comparable only when the node keeps up:
the default rate (0.05, a sweep every 2 s of wall time) is slow enough for the bundled model on
one CPU thread to process every sweep of the bundled recording. Drops are counted (node
diagnostics) and reported; frames without output are listed and left out of the IoU.

DDS stays on this machine: ``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST`` and, unless the environment
sets one, a ROS_DOMAIN_ID of this run's own (set ROS_DOMAIN_ID to watch the run in RViz).

Modules: :mod:`.prompts` (``--prompt`` specs, their frames, the automatic prompt),
:mod:`.bag_info` (the bag's topics, cameras and sweeps; its ground truth), :mod:`.node_session`
(the node's parameters and process, the demo's own ROS node, prompt messages), :mod:`.run` (node,
player, recorder and prompts together), :mod:`.report` (the recorded outputs, scores, report.json
and report.md), :mod:`.video` (overlay.mp4), :mod:`.cli` (options and ``main``),
:mod:`.errors` (``DemoError``).
"""

from sam4d_ros.tools.demo.bag_info import BagInfo, inspect_bag
from sam4d_ros.tools.demo.cli import (
    DEFAULT_BAG,
    DEFAULT_OUT,
    DEFAULT_RATE,
    build_parser,
    main,
    new_run_folder,
)
from sam4d_ros.tools.demo.errors import DemoError
from sam4d_ros.tools.demo.prompts import PromptSpec, parse_prompt, resolve_prompts

__all__ = [
    "DEFAULT_BAG",
    "DEFAULT_OUT",
    "DEFAULT_RATE",
    "BagInfo",
    "DemoError",
    "PromptSpec",
    "build_parser",
    "inspect_bag",
    "main",
    "new_run_folder",
    "parse_prompt",
    "resolve_prompts",
]
