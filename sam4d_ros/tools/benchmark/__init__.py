"""Replay benchmark of ``sam4d_node`` (``make benchmark``), reported like ros2_benchmark.

    python -m sam4d_ros.tools.benchmark [--bag DIR] [--prompt SPEC ...] [--out DIR]
        [--runtime torch ...] [--rates R ... | --start-rate R] [--soak MINUTES] [--faults]

The node runs in its own process (``python -m sam4d_ros.node``, the demo's parameters for the
bag); the bag (default: the bundled recording) is played into it with
:class:`~sam4d_ros.tools.play.BagPlayer` once per trial, at a playback rate; the prompts
(``--prompt`` as the demo takes them, or the demo's automatic one) are sent each trial. A monitor
node in the benchmark's process (not the node about itself) sees each LiDAR sweep go in and the
node's ``~/objects`` with the same stamp come out: sweeps sent / processed / dropped, frame rate,
end-to-end latency (mean, p50, p90, p99, max) and jitter. The node's own debug topics give the
processing time (and per stage, when it publishes ``~/debug/stage_times_ms``); ``/proc/<pid>``
gives its CPU % and RSS, ``nvidia-smi`` its GPU memory on CUDA; the bag's ground truth (when it
has some) the IoU per frame and object, as the demo scores it.

Peak throughput: the highest rate with < 5 % of the sweeps dropped, found by doubling / halving
from ``--start-rate`` and then bisecting (:func:`.rate_search.find_peak_rate`, like
ros2_benchmark's autotune). ``--soak MINUTES`` plays the bag pass after pass with the same
prompts and reports the RSS growth per hour after a warm-up (:mod:`.soak`); ``--faults`` runs
fault-injection episodes (:mod:`.faults`). Output in ``--out`` (default ``.build/benchmark``):
report.json, report.md and PNG plots (latency CDF, drops and latency against rate, memory over
time).

Every trial replays the bag from its start: the node sees time jump back and resets its tracker
(as with a looped bag), so each trial starts from the same state.

Modules: :mod:`.cli`, :mod:`.session` (node process, trials), :mod:`.monitor`, :mod:`.stats`
(latency bookkeeping, /proc sampling), :mod:`.rate_search`, :mod:`.soak`, :mod:`.faults`,
:mod:`.report`, :mod:`.plots`, :mod:`.progress`.
"""

from sam4d_ros.tools.benchmark.rate_search import RateSearch, find_peak_rate
from sam4d_ros.tools.benchmark.stats import LatencyBook

__all__ = ["LatencyBook", "RateSearch", "find_peak_rate"]
