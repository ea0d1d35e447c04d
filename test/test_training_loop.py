"""The training loop on the tiny config: a fixed batch is overfitted, resume reproduces the next
step bitwise, 2-process gloo DDP keeps the replicas identical, validation and the CLI."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sam4d_core.checkpoint import (
    CheckpointError,
    load_state_dict_strict,
    read_checkpoint,
    save_checkpoint,
)
from sam4d_core.data.synthetic import generate_sequence, make_config
from sam4d_core.modeling.configs import get_config
from sam4d_core.modeling.sam4d_base import SAM4D

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT))  # the repository's training/ package

from training.clip_forward import run_clip  # noqa: E402
from training.config import (  # noqa: E402
    DataConfig,
    LossConfig,
    PromptConfig,
    apply_overrides,
    load_train_config,
)
from training.datasets import ClipDataset, InMemorySource  # noqa: E402
from training.export_weights import export_weights  # noqa: E402
from training.export_weights import main as export_weights_main  # noqa: E402
from training.logger import read_scalars  # noqa: E402
from training.model_setup import build_model, lr_factor, model_config  # noqa: E402
from training.prompt_simulation import plan_clip  # noqa: E402
from training.train import Trainer  # noqa: E402
from training.validation import validate  # noqa: E402


@pytest.fixture(scope="module")
def tiny_dataset() -> ClipDataset:
    seq = generate_sequence(make_config("tiny", num_frames=2))
    cfg = DataConfig(sources=[], clip_length=2, max_objects=2, image_size=(96, 64), max_cameras=1)
    return ClipDataset([InMemorySource([seq])], cfg, seed=0)


def _tiny_cfg(**over):
    cfg = load_train_config("tiny_test")
    return apply_overrides(cfg, [f"{k}={v}" for k, v in over.items()])


def test_loss_falls_on_a_fixed_batch(tiny_dataset) -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = SAM4D(get_config("sam4d_tiny")).train()
    sample = tiny_dataset.sample(0)
    pcfg = PromptConfig(num_correction_frames=1, correction_clicks=1, prob_correct_from_gt=0.0)
    plan = plan_clip(sample, pcfg, np.random.default_rng(0))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(10):
        res = run_clip(model, sample, plan, pcfg, LossConfig(), np.random.default_rng(1))
        loss = res.losses.total()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert res.decodings == 3  # frame 0 + 1 corrective round, frame 1
    assert min(losses[-3:]) < 0.6 * losses[0], losses
    assert all(np.isfinite(losses))


def test_resume_reproduces_the_next_step_bitwise(tmp_path) -> None:
    torch.set_num_threads(1)
    cfg = _tiny_cfg(ckpt_every=2, steps=3)
    a = Trainer(cfg, tmp_path / "a", "cpu", quiet=True)
    ra = a.fit()
    b = Trainer(cfg, tmp_path / "b", "cpu", quiet=True)
    rb = b.fit(resume=tmp_path / "a" / "checkpoints" / "step_0000002.pt")
    assert [r.step for r in rb] == [3]
    assert rb[0].loss == ra[2].loss  # bitwise
    assert rb[0].clips == ra[2].clips
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a.optimizer.state_dict()["state"][0]["exp_avg"].equal(
        b.optimizer.state_dict()["state"][0]["exp_avg"]
    )
    # The run directory: config, checkpoints, JSONL scalars with the logged tags, final weights.
    out = tmp_path / "a"
    assert (out / "config.yaml").is_file()
    scalars = read_scalars(out / "logs" / "scalars.jsonl")
    assert [s for s, _ in scalars["train/loss"]] == [1, 2, 3]
    for tag in ("train/lr", "train/grad_norm", "train/image_focal", "train/lidar_dice"):
        assert tag in scalars
    final = read_checkpoint(out / "model_final.pt")
    assert final.config is not None and final.config.name == "sam4d_tiny"
    last = read_checkpoint(out / "checkpoints" / "last.pt")
    assert int(last.extra["train_state"]["step"]) == 3
    # Shipping: weights only, large tensors in float16, loadable into a float32 model.
    half = export_weights(out / "checkpoints" / "last.pt", tmp_path / "half.pt", half=True)
    ck = read_checkpoint(half)
    assert ck.extra["step"] == 3 and "train_state" not in ck.extra
    assert any(v.dtype == torch.float16 for v in ck.state_dict.values())
    m = load_state_dict_strict(SAM4D(ck.config), ck.state_dict)
    for k, v in m.state_dict().items():
        assert torch.allclose(v.float(), sa[k].float(), rtol=1e-3, atol=1e-3), k
    # An inference switch of the model config can be set on the way; a change of the module
    # tree cannot (the weights would no longer fit).
    assert ck.config.cross_modal_selection == 0.0
    switched = export_weights_main(
        [
            str(out / "model_final.pt"),
            str(tmp_path / "sw.pt"),
            "--model-set",
            "cross_modal_selection=1.5",
        ]
    )
    assert switched == 0
    assert read_checkpoint(tmp_path / "sw.pt").config.cross_modal_selection == 1.5
    with pytest.raises(ValueError, match="no longer fits"):
        export_weights(
            out / "model_final.pt",
            tmp_path / "bad.pt",
            model_changes={"memory_attention": {"num_layers": 3}},
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    cfg = _tiny_cfg(steps=2, ckpt_every=0)
    trainer = Trainer(cfg, out, "cpu", quiet=True)
    records = trainer.fit()
    torch.save(
        {
            "params": {k: v.detach().clone() for k, v in trainer.model.named_parameters()},
            "clips": [c for r in records for c in r.clips],
            "losses": [r.loss for r in records],
        },
        Path(out) / f"rank{rank}.pt",
    )
    trainer.close()


def test_ddp_two_gloo_processes_keep_replicas_identical(tmp_path) -> None:
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt")
    r1 = torch.load(tmp_path / "rank1.pt")
    assert r0["params"].keys() == r1["params"].keys()
    for k, v in r0["params"].items():
        assert torch.equal(v, r1["params"][k]), k
    # Each rank trained on its own clips; the logged loss is the mean over ranks (same on both).
    assert not set(r0["clips"]) & set(r1["clips"])
    assert r0["losses"] == r1["losses"]
    # Training moved the weights away from the initialisation.
    torch.manual_seed(0)
    init = dict(SAM4D(get_config("sam4d_tiny")).named_parameters())
    assert any(not torch.equal(init[k], v) for k, v in r0["params"].items())
    assert (tmp_path / "model_final.pt").is_file()  # rank 0 saved


def test_validation_metrics(tiny_dataset) -> None:
    torch.manual_seed(0)
    model = SAM4D(get_config("sam4d_tiny"))
    val = ClipDataset(
        tiny_dataset.sources,
        dataclasses.replace(
            tiny_dataset.cfg,
            augment=dataclasses.replace(tiny_dataset.cfg.augment, enabled=False),
        ),
        seed=1,
    )
    m = validate(model, val, num_clips=1)
    assert m["objects"] >= 1 and model.training  # the mode is restored
    for k in ("image_miou", "lidar_miou"):
        assert 0.0 <= m[k] <= 1.0
    assert any(k.endswith("_img_prompt") for k in m) or any(k.endswith("_lidar_prompt") for k in m)
    assert 0.0 <= m["image_miou_tracked"] <= 1.0  # 2-frame clips: frame 1 on its own too
    assert 0.0 <= m["image_miou_prompted"] <= 1.0  # and frame 0


def test_tracked_frames_are_scored_apart_from_the_prompted_one(tiny_dataset) -> None:
    """Right on the prompted frame, nothing on the next: 0.5 over the clip, 1 prompted, 0
    tracked."""
    from training.clip_forward import FramePrediction
    from training.validation import clip_object_ious, mean_ious, object_frame_ious

    sample = tiny_dataset.sample(0)
    t0, t1 = sample.targets[:2]
    right = FramePrediction(
        [None if m is None else m.copy() for m in t0.camera_masks], t0.point_masks
    )
    empty = FramePrediction(
        [None if m is None else np.zeros_like(m) for m in t1.camera_masks],
        np.zeros_like(t1.point_masks),
    )
    both = clip_object_ious(sample, [right, empty])
    tracked = clip_object_ious(sample, [right, empty], first_frame=1)
    prompted = mean_ious(object_frame_ious(sample, [right, empty]), 0, 1)
    checked = 0
    for b in range(sample.num_objects):
        for k in (0, 1):  # image, LiDAR
            if frame_has(t0, b, k) and frame_has(t1, b, k):
                assert both[b][k] == pytest.approx(0.5) and tracked[b][k] == 0.0, (b, k)
                assert prompted[b][k] == 1.0, (b, k)
                checked += 1
    assert checked >= 2


def frame_has(tg, b: int, k: int) -> bool:
    """Object ``b`` has ground truth in view ``k`` (0: some camera, 1: the LiDAR)."""
    if k == 0:
        return any(m is not None and m[b].any() for m in tg.camera_masks)
    return tg.point_masks is not None and bool((tg.point_masks[b] & tg.point_valid).any())


def test_lr_schedule() -> None:
    assert lr_factor(0, 100, 10, "cosine", 0.1) == pytest.approx(0.1)
    assert lr_factor(9, 100, 10, "cosine", 0.1) == pytest.approx(1.0)
    assert lr_factor(10, 100, 10, "cosine", 0.1) == pytest.approx(1.0)
    assert lr_factor(100, 100, 10, "cosine", 0.1) == pytest.approx(0.1)
    assert lr_factor(55, 100, 10, "linear", 0.0) == pytest.approx(0.5)
    assert lr_factor(55, 100, 0, "constant", 0.0) == 1.0


def test_cli_help_and_config(tmp_path) -> None:
    env = dict(os.environ)
    run = subprocess.run(
        [sys.executable, "-m", "training.train", "--help"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "--resume" in run.stdout and "torchrun" in run.stdout and "tiny_test" in run.stdout
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "training.train",
            "--config",
            "sam4d_small_synthetic",
            "--out",
            str(tmp_path),
            "--print-config",
            "--steps",
            "7",
            "--set",
            "optim.lr=0.01",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "steps: 7" in run.stdout and "lr: 0.01" in run.stdout
    with pytest.raises(ValueError, match="nope"):
        apply_overrides(load_train_config("tiny_test"), ["optim.nope=1"])
    # PyYAML reads "8e-4" (no dot) as a string; a float field takes it as the number.
    assert apply_overrides(load_train_config("tiny_test"), ["optim.lr=8e-4"]).optim.lr == 8e-4
    with pytest.raises(ValueError, match="optim.lr: expected float"):
        apply_overrides(load_train_config("tiny_test"), ["optim.lr=fast"])
    # PyYAML reads off / on as booleans; a string field takes them as the words.
    assert apply_overrides(load_train_config("tiny_test"), ["optim.amp=off"]).optim.amp == "off"


def test_mask_prompts_are_taken_as_output(tiny_dataset) -> None:
    """Ground-truth mask prompts are taken as output (no loss there)."""
    from training.prompt_simulation import ClipPlan, initial_prompt

    torch.manual_seed(0)
    model = SAM4D(get_config("sam4d_tiny")).train()
    sample = tiny_dataset.sample(1)
    rng = np.random.default_rng(0)
    pcfg = PromptConfig()
    kinds = ("image", "lidar")
    initial = [
        initial_prompt(sample, b, pcfg, rng, modality=kinds[b % 2], kind="mask")
        for b in range(sample.num_objects)
    ]
    plan = ClipPlan(initial, [0], {0: 1})
    res = run_clip(model, sample, plan, pcfg, LossConfig(), rng, record=True)
    loss = res.losses.total()
    loss.backward()
    assert torch.isfinite(loss)
    lidar_obj = [b for b, st in enumerate(initial) if st.view == -1]
    for b in lidar_obj:  # the LiDAR mask prompt is the frame-0 output itself
        np.testing.assert_array_equal(
            res.predictions[0].points[b], sample.targets[0].point_masks[b]
        )


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_trains_and_resumes_exactly(tmp_path, amp) -> None:
    """AMP, the CUDA path, checked with CPU autocast (slow on the CPU, so 3 tiny steps): the loss
    is computed in reduced precision (close to, not equal to, fp32's), fp16 scales the loss, and
    a resumed run (its scaler state included) reproduces the next step bitwise."""
    torch.set_num_threads(1)
    full = Trainer(_tiny_cfg(steps=1, ckpt_every=0), tmp_path / "fp32", "cpu", quiet=True).fit()
    cfg = _tiny_cfg(steps=3, ckpt_every=2, **{"optim.amp": amp})
    a = Trainer(cfg, tmp_path / "a", "cpu", quiet=True)
    assert a.amp_dtype == {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    assert a.scaler.is_enabled() == (amp == "fp16")
    ra = a.fit()
    assert all(np.isfinite(r.loss) for r in ra), ra
    assert ra[0].loss != full[0].loss and abs(ra[0].loss - full[0].loss) < 0.05 * full[0].loss
    b = Trainer(cfg, tmp_path / "b", "cpu", quiet=True)
    rb = b.fit(resume=tmp_path / "a" / "checkpoints" / "step_0000002.pt")
    assert rb[0].loss == ra[2].loss  # bitwise
    assert b.scaler.state_dict() == a.scaler.state_dict()


def test_resume_refuses_a_different_config(tmp_path, capsys) -> None:
    """Resuming with another recipe would change it halfway: refused, naming the keys; the run's
    own config.yaml (with more steps or threads) is accepted up to building the trainer."""
    from training.config import config_differences, dump_yaml
    from training.train import main

    saved = apply_overrides(
        load_train_config("tiny_test"), ["optim.lr=0.005", "data.max_objects=3"]
    )
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.pt").write_bytes(b"")
    (tmp_path / "config.yaml").write_text(dump_yaml(saved))
    rc = main(["--config", "tiny_test", "--out", str(tmp_path), "--resume"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "data.max_objects, optim.lr differ" in err and str(tmp_path / "config.yaml") in err
    longer = apply_overrides(saved, ["steps=99999", "num_threads=7", "data.num_workers=3"])
    assert config_differences(saved, longer) == []
    assert config_differences(saved, apply_overrides(saved, ["seed=5"])) == ["seed"]


def test_sigterm_to_the_process_group_stops_and_saves(tmp_path) -> None:
    """A batch scheduler stops a job with SIGTERM to all of its processes, data workers included:
    the run finishes its step, saves last.pt and exits 0 (a killed worker would crash it)."""
    import signal
    import time

    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "training.train", "--config", "tiny_test", "--out", str(out)]
        + ["--steps", "100000", "--workers", "1", "--no-tensorboard"],
        cwd=ROOT,
        env=dict(os.environ),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        scalars = out / "logs" / "scalars.jsonl"
        deadline = time.monotonic() + 240
        while not (scalars.is_file() and "train/loss" in scalars.read_text()):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
            time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGTERM)
        text, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, text
    assert "stopped at step" in text and (out / "checkpoints" / "last.pt").is_file(), text


def test_validation_cli_scores_a_checkpoint(tmp_path: Path, capsys) -> None:
    """``python -m training.validation``: a checkpoint's validation as a run computes it."""
    from training.validation import main as validation_main

    torch.manual_seed(0)
    ck = save_checkpoint(SAM4D(get_config("sam4d_tiny")), tmp_path / "m.pt")
    out = tmp_path / "val.json"
    argv = ["--config", "tiny_test", "--checkpoint", str(ck), "--clips", "2", "--json", str(out)]
    assert validation_main([*argv, "--clip-length", "1"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out.read_text())
    assert printed["objects"] >= 1 and 0.0 <= printed["lidar_miou"] <= 1.0
    # One frame: nothing is tracked, so there are no tracked / prompted splits.
    assert not any(k.endswith(("_tracked", "_prompted")) for k in printed)
    assert validation_main([*argv, "--clip-length", "2"]) == 0
    two = json.loads(capsys.readouterr().out)
    assert "lidar_miou_tracked" in two and "lidar_miou_prompted" in two
    # The ground-truth mask as the prompt is the prompted frame's output (as at inference), so
    # even this untrained model scores it near 1 in the prompted view, unlike its clicks.
    assert validation_main([*argv, "--clip-length", "2", "--prompt", "mask"]) == 0
    masked = json.loads(capsys.readouterr().out)
    for key in ("image_miou_prompted_img_prompt", "lidar_miou_prompted_lidar_prompt"):
        assert masked[key] > 0.8 > 0.5 > two[key], key


def test_an_unknown_validation_prompt_is_refused_at_start(tmp_path: Path) -> None:
    """``val.prompt`` is checked when the run starts, not at its first validation."""
    with pytest.raises(ValueError, match="val.prompt must be one of"):
        Trainer(_tiny_cfg(**{"val.prompt": "box"}), tmp_path / "run", quiet=True)
    assert not (tmp_path / "run").exists()


def test_every_named_config_loads() -> None:
    """The shipped recipes parse into valid configs (a typo in a YAML fails here, not hours into
    a run); the bundled model's recipe is one config of phases starting from the previous
    bundled weights, the first on single frames with many objects and frozen encoders."""
    from training.config import named_configs, phase_configs

    names = named_configs()
    assert {"sam4d_small_synthetic", "tiny_test"} <= set(names)
    for name in names:
        for _, cfg in phase_configs(load_train_config(name)):
            model_config(cfg)
    recipe = load_train_config("sam4d_small_synthetic")
    phases = dict(phase_configs(recipe))
    assert list(phases) == ["prompted", "tracking"]
    prompted, tracking = phases["prompted"], phases["tracking"]
    assert (prompted.data.clip_length, prompted.data.max_objects) == (1, 16)
    assert {"image_encoder", "point_encoder", "umpe"} <= set(prompted.freeze)
    assert tracking.data.clip_length > 1 and "memory_attention" not in tracking.freeze
    assert all(p.time_budget_s > 0 for p in phases.values())
    assert model_config(recipe).memory_attention.distance_bias
    assert recipe.init_checkpoint.endswith("sam4d_small_synthetic_6747818.pt")
    (src,) = recipe.data.sources
    assert src.kind == "synthetic" and src.seeds[0] >= 1000  # held-out seeds are 9xxxxx


def _started_from_a_checkpoint(tmp_path: Path, overrides: str, steps: int):
    """A tiny model saved as ``start.pt`` and a tiny run config starting from it with
    ``model_overrides``."""
    torch.manual_seed(0)
    start = SAM4D(get_config("sam4d_tiny"))
    save_checkpoint(start, tmp_path / "start.pt")
    cfg = apply_overrides(
        _tiny_cfg(steps=steps, ckpt_every=steps),
        [f"init_checkpoint={tmp_path / 'start.pt'}", f"model_overrides={overrides}"],
    )
    return start, cfg


def test_model_overrides_and_reinit(tmp_path: Path) -> None:
    """``model_overrides`` change the built model and travel in its checkpoints; ``reinit`` draws
    the named component anew after the init checkpoint is loaded and keeps everything else."""
    start, cfg = _started_from_a_checkpoint(
        tmp_path, "{memory_attention: {pos_scale: 0.5, tie_qk_init: true}}", steps=1
    )
    kept = build_model(cfg, torch.device("cpu"))
    assert kept.config.memory_attention.pos_scale == 0.5
    assert kept.memory_attention.pos_scale == 0.5
    # Without reinit the loaded weights win over the tied initialisation.
    ref = start.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in kept.state_dict().items())

    cfg = apply_overrides(cfg, ["reinit=[memory_attention]"])
    model = build_model(cfg, torch.device("cpu"))
    prefix = "pure_model.fusion.memory_attention."
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, ref[k])}
    assert changed and all(k.startswith(prefix) for k in changed)
    assert any(k.endswith("k_proj.weight") for k in changed)
    for layer in model.memory_attention.layers:
        attn = layer.cross_attn_image
        assert torch.equal(attn.k_proj.weight, attn.q_proj.weight)

    Trainer(cfg, tmp_path / "run", "cpu", quiet=True).fit()
    final = read_checkpoint(tmp_path / "run" / "model_final.pt")
    assert final.config.memory_attention.pos_scale == 0.5
    assert final.config.memory_attention.tie_qk_init
    assert SAM4D(final.config).memory_attention.pos_scale == 0.5

    with pytest.raises(ValueError, match="unknown components"):
        build_model(apply_overrides(cfg, ["reinit=[image_encoder]"]), torch.device("cpu"))
    with pytest.raises(ValueError, match="pos_scal"):
        build_model(
            apply_overrides(cfg, ["model_overrides={memory_attention: {pos_scal: 1}}"]),
            torch.device("cpu"),
        )


def test_reinit_with_new_parameters_and_freeze(tmp_path: Path) -> None:
    """A component drawn anew may have parameters its init checkpoint lacks (MCMA's distance
    bias gains); anything else missing is still refused. Frozen components do not change in
    training, the rest does."""
    start, cfg = _started_from_a_checkpoint(
        tmp_path, "{memory_attention: {distance_bias: true}}", steps=2
    )
    with pytest.raises(CheckpointError, match="place_gain"):
        build_model(cfg, torch.device("cpu"))
    cfg = apply_overrides(
        cfg, ["reinit=[memory_attention]", "freeze=[image_encoder, point_encoder, umpe]"]
    )
    model = build_model(cfg, torch.device("cpu"))
    ref = start.state_dict()
    for k, v in model.state_dict().items():
        if not k.startswith("pure_model.fusion.memory_attention."):
            assert torch.equal(v, ref[k]), k
    assert model.memory_attention.layers[0].place_gain is not None
    frozen = ("pure_model.backbone.", "union_pe_func.")
    assert all(p.requires_grad != n.startswith(frozen) for n, p in model.named_parameters()), (
        "freeze must stop exactly the named components"
    )

    Trainer(cfg, tmp_path / "run", "cpu", quiet=True).fit()
    final = read_checkpoint(tmp_path / "run" / "model_final.pt").state_dict
    changed = {k for k in ref if k in final and not torch.equal(final[k], ref[k])}
    # Frozen means frozen, BatchNorm statistics included.
    assert changed and not any(k.startswith(frozen) for k in changed)
    assert any(k.startswith("pure_model.head.") for k in changed)
    assert final["pure_model.fusion.memory_attention.layers.0.place_gain"].shape == (1,)

    with pytest.raises(ValueError, match="freeze: unknown components"):
        build_model(apply_overrides(cfg, ["freeze=[decoder]"]), torch.device("cpu"))


def test_a_config_lists_only_what_it_changes_from_its_base(tmp_path: Path) -> None:
    """``base:`` merges mappings key by key and replaces lists and scalars; a named base, a
    relative file base, chains, cycles and typos behave."""
    from training.config import merge_config_data

    assert merge_config_data(
        {"a": 1, "m": {"x": 1, "y": [1, 2]}, "l": [1]}, {"m": {"y": [3]}, "l": [], "b": 2}
    ) == {"a": 1, "m": {"x": 1, "y": [3]}, "l": [], "b": 2}

    (tmp_path / "parent.yaml").write_text(
        "base: tiny_test\nsteps: 7\noptim:\n  lr: 2.0e-3\n"
        "data:\n  sources:\n    - kind: synthetic\n      preset: tiny\n      seeds: [5, 6]\n"
    )
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "child.yaml").write_text("base: ../parent.yaml\noptim:\n  warmup_steps: 3\n")
    tiny = load_train_config("tiny_test")
    child = load_train_config(sub / "child.yaml")
    assert (child.steps, child.optim.lr, child.optim.warmup_steps) == (7, 2.0e-3, 3)
    # Untouched keys of a merged mapping come from the base; a list is replaced whole.
    assert child.optim.weight_decay == tiny.optim.weight_decay
    assert child.data.clip_length == tiny.data.clip_length
    assert [(s.kind, s.seeds) for s in child.data.sources] == [("synthetic", (5, 6))]
    assert child.model == tiny.model and child.loss == tiny.loss

    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ValueError, match="cycle: a.yaml -> b.yaml -> a.yaml"):
        load_train_config(tmp_path / "a.yaml")
    (tmp_path / "missing.yaml").write_text("base: no_such_config\n")
    with pytest.raises(FileNotFoundError, match="no_such_config"):
        load_train_config(tmp_path / "missing.yaml")
    (tmp_path / "typo.yaml").write_text("base: tiny_test\noptim:\n  lrr: 1.0\n")
    with pytest.raises(ValueError, match="lrr"):
        load_train_config(tmp_path / "typo.yaml")
    (tmp_path / "bad.yaml").write_text("base: [tiny_test]\n")
    with pytest.raises(ValueError, match="config name or a YAML path"):
        load_train_config(tmp_path / "bad.yaml")


def test_budget_total_steps() -> None:
    """A time-budgeted run's length: what fits in the remaining time, within the upper bound,
    and a spent budget ends the run at the current step."""
    from training.model_setup import budget_total_steps

    assert budget_total_steps(10, remaining_s=50.0, step_s=0.5, upper=1000) == 110
    assert budget_total_steps(10, remaining_s=50.0, step_s=0.01, upper=1000) == 1000
    assert budget_total_steps(10, remaining_s=0.2, step_s=0.5, upper=1000) == 10
    assert budget_total_steps(10, remaining_s=-3.0, step_s=0.5, upper=1000) == 10


def test_a_time_budget_ends_the_run_and_saves(tmp_path: Path) -> None:
    """With a budget far below ``steps``, the run stops on its own, saves its weights and says
    how far it got; the schedule was fitted to the steps it made (lr decayed to its end)."""
    cfg = _tiny_cfg(steps=100000, time_budget_s=0.5, ckpt_every=100000)
    trainer = Trainer(cfg, tmp_path / "run", device="cpu", use_tensorboard=False, quiet=True)
    records = trainer.fit()
    assert 1 <= len(records) < 100000
    assert (tmp_path / "run" / "model_final.pt").is_file()
    assert trainer.cfg.steps == trainer.step == len(records)


def test_a_recipe_runs_its_phases_in_order(tmp_path: Path) -> None:
    """``phases``: each phase trains from the previous one's weights in its own folder with its
    own settings; the recipe's result is the last phase's; a second call skips finished phases."""
    from training.config import phase_configs
    from training.train import main

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "base: tiny_test\n"
        "phases:\n"
        "  - name: one\n"
        "    steps: 2\n"
        "  - name: two\n"
        "    steps: 1\n"
        "    data:\n"
        "      clip_length: 1\n"
        "    optim:\n"
        "      lr: 1.0e-4\n"
    )
    phases = phase_configs(load_train_config(recipe))
    assert [n for n, _ in phases] == ["one", "two"]
    assert (phases[0][1].data.clip_length, phases[1][1].data.clip_length) == (2, 1)
    assert phases[1][1].optim.lr == 1e-4 and phases[1][1].phases is None
    out = tmp_path / "out"
    args = ["--config", str(recipe), "--out", str(out), "--device", "cpu", "--no-tensorboard"]
    assert main(args) == 0
    two = load_train_config(out / "two" / "config.yaml")
    assert two.init_checkpoint == str(out / "one" / "model_final.pt")
    assert two.steps == 1 and two.data.clip_length == 1
    final = read_checkpoint(out / "model_final.pt").state_dict
    last = read_checkpoint(out / "two" / "model_final.pt").state_dict
    first = read_checkpoint(out / "one" / "model_final.pt").state_dict
    assert all(torch.equal(final[k], last[k]) for k in final)
    assert any(not torch.equal(first[k], last[k]) for k in first)
    stamp = (out / "two" / "model_final.pt").stat().st_mtime_ns
    assert main(args) == 0  # both phases done before: nothing trains again
    assert (out / "two" / "model_final.pt").stat().st_mtime_ns == stamp
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: tiny_test\nphases:\n  - steps: 2\n")
    with pytest.raises(ValueError, match="plain name"):
        phase_configs(load_train_config(bad))


def test_init_from_weights_of_another_input_size(tmp_path: Path) -> None:
    """The image input size is a free choice when starting from trained weights: Hiera's
    position embeddings interpolate, and the UMPE frustum (derived from the size) is redrawn."""
    src = SAM4D(get_config("sam4d_tiny"))
    path = save_checkpoint(src, tmp_path / "tiny.pt")
    cfg = _tiny_cfg(init_checkpoint=str(path))
    cfg.model_overrides = {"image": {"image_size": [128, 192]}}
    model = build_model(cfg, torch.device("cpu"))
    own = SAM4D(model_config(cfg)).state_dict()
    key = "union_pe_func.union_pe_layer.frustum"
    assert model.state_dict()[key].shape == own[key].shape != src.state_dict()[key].shape
    torch.testing.assert_close(model.state_dict()[key], own[key])
    for k, v in src.state_dict().items():
        if k != key:
            torch.testing.assert_close(model.state_dict()[k], v)
