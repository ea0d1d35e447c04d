"""The replay benchmark (``python -m sam4d_ros.tools.benchmark``): its rate search against a
synthetic responder of known capacity, the latency bookkeeping, the memory-growth figure, the
report; then short runs over real DDS with the node in its own process (a tiny random model):
a benchmark at two rates with the fault episodes, and a one-minute soak.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO_ROOT
from sam4d_ros.tools.benchmark.rate_search import find_peak_rate
from sam4d_ros.tools.benchmark.stats import (
    LatencyBook,
    bag_clock_to_wall_ms,
    jitter_ms,
    read_proc,
    summarize,
)

# ------------------------------------------------------------------------------ pure


def _responder(capacity: float):
    """A node that processes at most ``capacity`` rate units: at rate r it drops 1 - C / r."""
    calls: list[float] = []

    def measure(rate: float) -> float:
        calls.append(rate)
        return max(0.0, 1.0 - capacity / rate)

    return measure, calls


@pytest.mark.parametrize("capacity,start", [(0.37, 0.1), (0.37, 2.0), (3.3, 0.05), (0.011, 0.5)])
def test_rate_search_finds_a_known_capacity(capacity: float, start: float) -> None:
    measure, calls = _responder(capacity)
    res = 0.1
    s = find_peak_rate(measure, start, max_drop=0.05, resolution=res, max_trials=20)
    true_peak = capacity / 0.95  # drops < 5 % below this rate
    assert s.resolved and s.peak_rate is not None and s.failing_rate is not None
    assert s.peak_rate < true_peak <= s.failing_rate
    assert s.failing_rate / s.peak_rate <= 1 + res
    assert true_peak / s.peak_rate <= 1 + res
    assert [r for r, _ in s.trials] == calls and len(set(calls)) == len(calls)


def test_rate_search_reports_what_it_could_not_find() -> None:
    measure, _ = _responder(1e-6)
    s = find_peak_rate(measure, 0.1, min_rate=0.01, max_trials=10)
    assert s.peak_rate is None and s.failing_rate == 0.01 and s.resolved  # min_rate failed
    measure, _ = _responder(1e6)
    s = find_peak_rate(measure, 1.0, max_rate=8.0)
    assert s.peak_rate == 8.0 and s.failing_rate is None and s.resolved
    measure, _ = _responder(0.5)
    s = find_peak_rate(measure, 0.1, resolution=1e-6, max_trials=4)
    assert len(s.trials) == 4 and not s.resolved and s.peak_rate is not None
    with pytest.raises(ValueError):
        find_peak_rate(measure, 0.0)


def test_latency_book_stamps_in_stamps_out() -> None:
    b = LatencyBook()
    # Sweeps every 0.1 s of bag time at rate 0.5: on the wire every 0.2 s.
    for k in range(5):
        b.stamp_in(1_000 + k, wall_s=10.0 + 0.2 * k)
    assert b.stamp_out(1_000, 10.15) == pytest.approx(150.0)
    assert b.stamp_out(1_000, 10.50) is None  # a re-publication after a prompt: not counted
    assert b.stamp_out(1_002, 10.70) == pytest.approx(300.0)
    assert b.stamp_out(1_004, 11.05) == pytest.approx(250.0)
    assert b.stamp_out(9_999, 11.10) is None  # an output of no input
    assert (b.sent, b.processed, b.dropped, b.unmatched_outputs) == (5, 3, 2, 2)
    assert b.drop_fraction() == pytest.approx(0.4)
    assert b.frame_rate_hz() == pytest.approx(2 / 0.9)
    # A looped bag sends a stamp again: a new input.
    b.stamp_in(1_000, 20.0)
    assert b.stamp_out(1_000, 20.1) == pytest.approx(100.0)
    assert b.matched_stamps == [1_000, 1_002, 1_004, 1_000]
    # The node's own latency on the replayed clock, in wall ms: bag time runs `rate` times
    # as fast as the wall clock.
    assert bag_clock_to_wall_ms(50.0, 0.1) == pytest.approx(500.0)
    assert bag_clock_to_wall_ms(50.0, 2.0) == pytest.approx(25.0)
    with pytest.raises(ValueError):
        bag_clock_to_wall_ms(1.0, 0.0)


def test_latency_book_is_bounded() -> None:
    b = LatencyBook(max_pending=100)
    for k in range(1_000):
        b.stamp_in(k, float(k))
    assert len(b.pending) == 100 and b.dropped == 1_000
    assert b.stamp_out(999, 1_000.0) == pytest.approx(1_000.0)


def test_summaries_and_jitter() -> None:
    s = summarize([10.0, 20.0, 30.0, 40.0])
    assert s["count"] == 4 and s["mean"] == 25.0 and s["max"] == 40.0
    assert s["p50"] <= s["p90"] <= s["p99"] <= s["max"]
    assert summarize([])["p50"] is None
    assert jitter_ms([0.0, 0.1, 0.2, 0.3]) == pytest.approx(0.0, abs=1e-9)
    assert jitter_ms([0.0, 0.1, 0.3, 0.4]) == pytest.approx(np.std([100, 200, 100]))
    me = read_proc(os.getpid())
    assert me is not None and me.rss_mb > 1 and me.cpu_s > 0
    assert read_proc(2**22 + 12345) is None


def test_memory_growth_after_warmup() -> None:
    from sam4d_ros.tools.benchmark.soak import memory_growth

    t = np.arange(0, 600, 1.0)
    # Fast growth in the 2-minute warm-up, then 10 MB over the remaining 8 minutes.
    rss = np.where(t < 120, 300 + t, 420 + (t - 120) * 10 / 480)
    g = memory_growth(t, rss, warmup_s=120)
    assert g["enough"] and g["mb_per_hour"] == pytest.approx(75.0, rel=0.02)
    assert g["percent_per_hour"] == pytest.approx(100 * 75 / 420, rel=0.05)
    assert g["rss_max_mb"] == pytest.approx(430, abs=0.1)
    short = memory_growth(t[:60], rss[:60], warmup_s=120)
    assert not short["enough"] and short["mb_per_hour"] > 0


def test_runtime_option() -> None:
    from sam4d_ros.parameters import global_parameter_specs
    from sam4d_ros.tools.benchmark.cli import check_runtimes

    assert check_runtimes(["torch"]) is None
    has_param = any(s.name == "model.runtime" for s in global_parameter_specs())
    why = check_runtimes(["torch", "onnxruntime"])
    if has_param:
        print("the node has model.runtime: onnxruntime accepted or refused by its choices")
        assert why is None or "onnxruntime" in why
    else:
        assert why is not None and "model.runtime" in why and "onnxruntime" in why
    assert check_runtimes(["no_such_runtime"]) is not None


def test_the_report(tmp_path: Path) -> None:
    import cv2

    from sam4d_ros.tools.benchmark.report import trial_dict, write_report
    from sam4d_ros.tools.benchmark.session import TrialResult

    def trial(rate: float, drop: int) -> TrialResult:
        lat = list(np.linspace(100, 300, 40 - drop))
        return TrialResult(
            rate=rate, label="search", sweeps_sent=40, sweeps_processed=40 - drop,
            sweeps_dropped=drop, drop_fraction=drop / 40, frame_rate_hz=2.0,
            latency_ms=summarize(lat), jitter_ms=5.0, processing_ms=summarize(lat),
            pipeline_ms=summarize(lat), stages_ms={"total": summarize(lat)},
            node_counters={"sweeps_received": 40}, resources={"cpu_percent": 90.0,
            "rss_mb_mean": 500.0, "rss_mb_max": 510.0, "hwm_mb": 520.0, "gpu_mb_max": None},
            diagnostics_levels={"n: processing": {"OK": 3}}, prompts=[], latencies_ms=lat,
        )  # fmt: skip

    trials = [trial(0.1, 0), trial(0.2, 1), trial(0.4, 12)]
    rep = {
        "command": "python -m sam4d_ros.tools.benchmark", "bag": "bag", "checkpoint": "m.pt",
        "sweeps_in_bag": 40, "sweep_hz": 10.0, "cameras": 2, "prompts": ["front:1,2@0"],
        "machine": {"cpu": "cpu", "cores": 2, "memory_gb": 8, "gpu": None, "device": "cpu",
                    "torch_threads": 1, "load_average": [1.0]},
        "machine_name": "test machine", "note": "shared CPU",
        "runtimes": {"torch": {
            "trials": [trial_dict(t) for t in trials],
            "search": {"peak_rate": 0.2, "failing_rate": 0.4, "max_drop": 0.05,
                       "resolution": 0.15, "resolved": False, "trials": [[0.1, 0.0]]},
            "faults": [{"fault": "NaN transforms", "sent": 3, "node_alive": True,
                        "recover_s": 0.4, "good_sweeps_lost": 0,
                        "levels_seen": {"OK": 5, "WARN": 1}}],
        }},
        "memory_series": {"t_s": [0.0, 1.0, 2.0], "rss_mb": [500.0, 505.0, 503.0]},
    }  # fmt: skip
    files = write_report(rep, {"torch": trials}, tmp_path)
    back = json.loads((tmp_path / "report.json").read_text())
    assert back["runtimes"]["torch"]["search"]["peak_rate"] == 0.2
    assert len(back["runtimes"]["torch"]["trials"][0]["latencies_ms"]) == 40
    md = (tmp_path / "report.md").read_text()
    for what in ("Peak throughput", "2.00 sweeps/s", "test machine", "shared CPU", "p99",
                 "jitter", "| total |", "NaN transforms", "latency_cdf.png",
                 "memory.png"):  # fmt: skip
        assert what in md, what
    pngs = [f for f in files if f.suffix == ".png"]
    assert {p.name for p in pngs} == {"latency_cdf.png", "drops_vs_rate.png",
                                      "latency_vs_rate.png", "memory.png"}  # fmt: skip
    for p in pngs:
        img = cv2.imread(str(p))
        assert img is not None and img.shape[0] > 100 and img.std() > 5


# ------------------------------------------------------------------------------ real DDS


def _bench(out: Path, ckpt: Path, *args: str, timeout: float) -> tuple[dict, str]:
    # A domain from 215-232 (valid with Fast DDS, unused by conftest's 1-100): other test runs
    # on this machine that play the bundled recording must not reach our node and monitor.
    env = dict(os.environ, ROS_DOMAIN_ID=str(215 + os.getpid() % 18))
    proc = subprocess.run(
        [sys.executable, "-m", "sam4d_ros.tools.benchmark", "--checkpoint", str(ckpt),
         "--out", str(out), "--no-progress", *args],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout, env=env,
    )  # fmt: skip
    text = proc.stdout + proc.stderr
    log = out / "node.log"
    assert proc.returncode == 0, text + (log.read_text()[-3000:] if log.exists() else "")
    return json.loads((out / "report.json").read_text()), text


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    from node_harness import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt")


def _check_trial(t: dict) -> None:
    assert t["sweeps_sent"] == 40
    assert t["sweeps_processed"] + t["sweeps_dropped"] == t["sweeps_sent"]
    assert t["latency_ms"]["count"] == t["sweeps_processed"] > 0
    lat = t["latency_ms"]
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    c = t["node_counters"]
    assert c["sweeps_received"] == 40
    # What the node says it did agrees with what the monitor saw come out.
    assert c["sweeps_processed"] == t["sweeps_processed"]
    assert c["sweeps_dropped"] + c["sweeps_failed"] + c["sweeps_skipped"] == t["sweeps_dropped"]
    assert t["resources"]["rss_mb_max"] > 50 and t["resources"]["cpu_percent"] > 0
    assert t["node_alive"]


def test_short_benchmark_with_faults(tmp_path: Path, tiny_ckpt: Path) -> None:
    """Two rates (the bag at half and at four times its speed) and the fault episodes at
    twice its speed, over real DDS."""
    rep, text = _bench(tmp_path, tiny_ckpt, "--rates", "0.5", "4", "--faults",
                       "--soak-rate", "2", "--tf-withheld", "0.5", timeout=400)  # fmt: skip
    r = rep["runtimes"]["torch"]
    trials = [t for t in r["trials"] if t["label"] == "rate"]
    assert [t["rate"] for t in trials] == [0.5, 4.0]
    for t in trials:
        _check_trial(t)
    # 10 sweeps/s offered to a node that needs >100 ms a sweep on 2 shared cores: some dropped
    # (counted), at 2 sweeps/s fewer.
    assert trials[1]["sweeps_dropped"] > 0
    assert trials[1]["drop_fraction"] >= trials[0]["drop_fraction"]
    assert set(trials[0]["stages_ms"]) >= {"image_encoder", "lidar_encoder", "total"}
    acc = trials[0]["accuracy"]
    assert acc, trials[0]["prompts"]
    assert acc[0]["frames_evaluated"] > 0 and acc[0]["mean_image_iou"] is not None
    faults = r["faults"]
    assert len(faults) == 9
    for f in faults:
        assert f["sent"] > 0 and f["node_alive"], f
        assert f["good_sweeps_lost"] >= 0 and sum(f["levels_seen"].values()) > 0, f
    storm = next(f for f in faults if f["fault"].startswith("prompt storm"))
    assert storm["service_answers"] == 20 == storm["service_refused_with_message"]
    md = (tmp_path / "report.md").read_text()
    assert "Fault injection" in md and "End-to-end latency" in md
    for png in ("latency_cdf.png", "drops_vs_rate.png", "latency_vs_rate.png", "memory.png"):
        assert (tmp_path / png).stat().st_size > 1000, png
    print(md[:3000])


def test_short_soak(tmp_path: Path, tiny_ckpt: Path) -> None:
    """A one-minute soak: passes of the bag with the same prompt, RSS sampled all along."""
    rep, text = _bench(tmp_path, tiny_ckpt, "--soak", "1", "--warmup", "0.25",
                       "--soak-rate", "2", timeout=300)  # fmt: skip
    s = rep["runtimes"]["torch"]["soak"]
    assert s["node_alive"] and s["passes"] >= 3 and s["minutes_run"] >= 1.0
    times = [p["t_min"] for p in s["per_pass"]]
    assert times == sorted(times)
    assert s["sweeps_processed"] > 0 and s["sweeps_sent"] == 40 * s["passes"]
    for t in rep["runtimes"]["torch"]["trials"]:
        _check_trial(t)
    g = s["growth"]
    # Bounded over the short run (the 30-minute soak states the real growth).
    assert g["rss_start_mb"] > 50 and g["rss_end_mb"] < 1.5 * g["rss_start_mb"]
    assert math.isfinite(g["mb_per_hour"])
    assert "not exposed by the node" in s["tensor_memory"]
    mem = rep["memory_series"]
    assert len(mem["t_s"]) > 60 and (tmp_path / "memory.png").exists()
    print(json.dumps(g), s["latency_ms"])


def test_bad_runtime_is_refused_clearly(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "sam4d_ros.tools.benchmark", "--runtime", "torch", "nope",
         "--out", str(tmp_path)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, env=dict(os.environ),
    )  # fmt: skip
    assert proc.returncode == 2 and "nope" in proc.stderr, proc.stderr
