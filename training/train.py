"""Train SAM4D: AdamW + warm-up/decay, AMP, clipping, exact resume, logging, validation, DDP.

Usage::

    python -m training.train --config sam4d_small_synthetic --out runs/small   # a named recipe
    python -m training.train --config my.yaml --out DIR --resume              # continue DIR
    python -m training.train --config tiny_test --out /tmp/t --steps 20 --set optim.lr=1e-3
    torchrun --nproc_per_node 2 -m training.train --config ... --out DIR      # data parallel

One step = ``batch_size`` clips per rank, each a SAM2-style video sample run through
:func:`~.clip_forward.run_clip` (losses summed over frames and corrective rounds), the mean over
the clips back-propagated; gradients averaged over ranks (DistributedDataParallel: gloo on the
CPU, nccl on CUDA), clipped, AdamW step, scheduler step.

Output directory::

    config.yaml                  the resolved config of the run
    checkpoints/last.pt          model (our checkpoint format, config embedded) + training state
    checkpoints/step_XXXXXXX.pt  periodic copies (the last ``keep_checkpoints`` kept)
    logs/scalars.jsonl           every scalar (TensorBoard event files too when installed)
    model_final.pt               the trained weights only (our format), written at the end

Exact resume: the checkpoint holds the model, optimizer, scheduler, AMP scaler, the RNG states
of python / numpy / torch (+ CUDA) of every rank and the step; the data order is a function of
(seed, clip number) (:mod:`.datasets`), so the next step after a resume sees the same clips,
prompts and dropout masks as without the interruption (bitwise on the CPU with the same thread
count; on CUDA with ``deterministic: true``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import random
import shutil
import signal
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from sam4d_core.checkpoint import load_state_dict_strict, read_checkpoint, save_checkpoint
from sam4d_core.modeling.sam4d_base import SAM4D

from .clip_forward import run_clip
from .config import (
    TrainConfig,
    apply_overrides,
    config_differences,
    dump_yaml,
    load_train_config,
    named_configs,
    phase_configs,
    to_dict,
)
from .datasets import ClipDataset, ClipSample, build_dataset
from .logger import ProgressBar, ScalarLogger
from .model_setup import (
    BUDGET_PROBE_STEPS,
    BUDGET_WARMUP_STEPS,
    budget_total_steps,
    build_model,
    component_modules,
    lr_factor,
    param_groups,
    resolve_amp,
)
from .prompt_simulation import plan_clip
from .validation import VALIDATION_PROMPTS, validate, validation_dataset

# ---------------------------------------------------------------------------------------------
# Distributed set-up.


@dataclass
class DistInfo:
    """This process's place in the job (a single process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str) -> tuple[DistInfo, torch.device]:
    """Joins the process group when launched by torchrun (``WORLD_SIZE`` > 1): nccl on CUDA,
    gloo on the CPU. Returns the rank info and this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    info = DistInfo(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", info.local_rank if dev.index is None else dev.index)
        torch.cuda.set_device(dev)
    if info.enabled and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return info, dev


# ---------------------------------------------------------------------------------------------
# The DDP-wrapped module: a whole clip's losses in forward.


class ClipLossModule(nn.Module):
    """Runs clips and returns their mean loss (what DistributedDataParallel wraps: DDP hooks
    into ``forward``, and SAM4D itself has no forward)."""

    def __init__(self, model: SAM4D, cfg: TrainConfig) -> None:
        super().__init__()
        self.model = model
        self.cfg = cfg

    def forward(self, samples: list[ClipSample]) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.cfg
        total = None
        scalars: dict[str, float] = {}
        decodings = 0
        for s in samples:
            rng = np.random.default_rng([cfg.seed, 2, s.index])
            plan = plan_clip(s, cfg.prompts, rng, cfg.data.min_pixels, cfg.data.min_points)
            res = run_clip(self.model, s, plan, cfg.prompts, cfg.loss, rng)
            assert res.losses is not None
            loss = res.losses.total()
            total = loss if total is None else total + loss
            for k, v in res.losses.scalars().items():
                scalars[k] = scalars.get(k, 0.0) + v / len(samples)
            decodings += res.decodings
        assert total is not None
        scalars["decodings"] = decodings / len(samples)
        scalars["objects"] = sum(s.num_objects for s in samples) / len(samples)
        return total / len(samples), scalars


# ---------------------------------------------------------------------------------------------
# Data order.


class _ClipNumbers(torch.utils.data.Sampler):
    """Batches of clip numbers for this rank from ``start_step`` on (infinite)."""

    def __init__(self, start_step: int, batch_size: int, info: DistInfo) -> None:
        self.start_step = start_step
        self.batch_size = batch_size
        self.info = info

    def __iter__(self) -> Iterator[list[int]]:
        step = self.start_step
        w, r, bs = self.info.world_size, self.info.rank, self.batch_size
        while True:
            base = (step * w + r) * bs
            yield list(range(base, base + bs))
            step += 1


def _identity(batch: list[ClipSample]) -> list[ClipSample]:
    return batch


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # data workers share the cores with the training process
    # A stop request sent to the whole process group (a terminal's Ctrl-C, a batch scheduler's
    # SIGTERM to every process of the job) is the main process's to handle: it finishes the step,
    # saves and shuts the workers down. A worker killed by it would crash the run unsaved.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def clip_loader(dataset: ClipDataset, start_step: int, cfg: TrainConfig, info: DistInfo):
    """An iterator of per-rank clip batches starting at ``start_step``."""
    # The loader gets its own generator so that creating it does not consume the global torch
    # RNG (which would shift the dropout stream of a resumed run).
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=_ClipNumbers(start_step, cfg.batch_size, info),
        collate_fn=_identity,
        num_workers=cfg.data.num_workers,
        worker_init_fn=_worker_init if cfg.data.num_workers > 0 else None,
        generator=torch.Generator().manual_seed(cfg.seed),
        prefetch_factor=2 if cfg.data.num_workers > 0 else None,
        persistent_workers=cfg.data.num_workers > 0,
    )
    return iter(loader)


# ---------------------------------------------------------------------------------------------
# RNG state (weights_only-loadable: tensors, ints, lists).


def get_rng_state() -> dict[str, Any]:
    ver, keys, gauss = random.getstate()
    # The legacy global numpy stream: not used by this package, but by libraries it calls.
    name, arr, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002
    state: dict[str, Any] = {
        "python": [int(ver), list(keys), gauss],
        "numpy": [name, torch.from_numpy(arr.astype(np.int64)), int(pos), int(has_gauss), cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    ver, keys, gauss = state["python"]
    random.setstate((ver, tuple(keys), gauss))
    name, arr, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, arr.numpy().astype(np.uint32), pos, has_gauss, cached))  # noqa: NPY002
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------------------------
# The trainer.


@dataclass
class StepRecord:
    """What one optimizer step produced (returned by :meth:`Trainer.fit`)."""

    step: int
    loss: float
    grad_norm: float
    lr: float
    skipped: bool
    clips: list[str] = dataclasses.field(default_factory=list)


class Trainer:
    """Owns the model, optimizer, scheduler, data and logs of one run (module docstring).

    Args:
        cfg: the run's config.
        out_dir: the run directory.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or ``"auto"``.
        use_tensorboard: None: when available.
        quiet: no progress bar (tests).
    """

    def __init__(
        self,
        cfg: TrainConfig,
        out_dir: str | Path,
        device: str = "auto",
        use_tensorboard: bool | None = None,
        quiet: bool = False,
    ) -> None:
        if cfg.val.prompt not in VALIDATION_PROMPTS:
            # Checked here, not hours into the run at the first validation.
            raise ValueError(
                f"val.prompt must be one of {VALIDATION_PROMPTS}, got {cfg.val.prompt!r}"
            )
        self.cfg = cfg
        self.out = Path(out_dir)
        self.info, self.device = init_distributed(device)
        self.quiet = quiet
        if cfg.num_threads > 0:
            torch.set_num_threads(cfg.num_threads)
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True)
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        # Same initial weights on every rank (DDP also broadcasts them), then per-rank streams.
        torch.manual_seed(cfg.seed)
        self.model = build_model(cfg, self.device)
        self.frozen = component_modules(self.model, cfg.freeze)
        rank_seed = cfg.seed * 1000 + self.info.rank
        random.seed(rank_seed)
        np.random.seed(rank_seed % 2**32)  # noqa: NPY002 (the global stream, see get_rng_state)
        torch.manual_seed(rank_seed)
        self.loss_module: nn.Module = ClipLossModule(self.model, cfg)
        if self.info.enabled:
            # Depthwise convolution weights (C, 1, k, k) get gradients whose size-1 dimension has
            # another stride than DDP's bucket view: same memory layout, only a perf warning.
            warnings.filterwarnings("ignore", message="Grad strides do not match bucket view")
            self.loss_module = nn.parallel.DistributedDataParallel(
                self.loss_module,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                # Which parameters get gradients varies per step (box / click / mask prompts,
                # multimask or not, missing views).
                find_unused_parameters=True,
            )
        oc = cfg.optim
        self.optimizer = torch.optim.AdamW(
            param_groups(self.model, oc.weight_decay), lr=oc.lr, betas=tuple(oc.betas)
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda s: lr_factor(s, cfg.steps, oc.warmup_steps, oc.schedule, oc.min_lr_ratio),
        )
        self.amp_dtype = resolve_amp(oc.amp, self.device)
        # fp16 needs loss scaling on any device (its gradients underflow); bf16 does not.
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=self.amp_dtype == torch.float16
        )
        self.step = 0
        self.dataset = build_dataset(cfg.data.sources, cfg.data, cfg.seed)
        self.val_dataset = None
        if cfg.val.sources and cfg.val.every > 0 and cfg.val.num_clips > 0:
            self.val_dataset = validation_dataset(cfg)
        self.logger: ScalarLogger | None = None
        self._use_tb = use_tensorboard
        self._stop = False

    # -------------------------------------------------------------- checkpoints
    @property
    def ckpt_dir(self) -> Path:
        return self.out / "checkpoints"

    def save(self) -> Path | None:
        """Writes ``checkpoints/last.pt`` (all ranks' RNG states gathered; rank 0 writes)."""
        rng = get_rng_state()
        if self.info.enabled:
            states: list[Any] = [None] * self.info.world_size
            dist.all_gather_object(states, rng)
        else:
            states = [rng]
        path = None
        if self.info.is_main:
            state = {
                "step": self.step,
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "rng": states,
                "world_size": self.info.world_size,
                "train_config": to_dict(self.cfg),
            }
            path = save_checkpoint(self.model, self.ckpt_dir / "last.pt", {"train_state": state})
            if self.cfg.ckpt_every > 0 and self.step % self.cfg.ckpt_every == 0:
                shutil.copyfile(path, self.ckpt_dir / f"step_{self.step:07d}.pt")
                old = sorted(self.ckpt_dir.glob("step_*.pt"))[: -max(1, self.cfg.keep_checkpoints)]
                for p in old:
                    p.unlink()
        if self.info.enabled:
            dist.barrier()
        return path

    def resume(self, path: str | Path | None = None) -> int:
        """Restores everything from ``path`` (default ``checkpoints/last.pt``); returns the
        step. The run must use the same world size (the data order depends on it)."""
        path = Path(path) if path else self.ckpt_dir / "last.pt"
        ckpt = read_checkpoint(path)
        state = ckpt.extra.get("train_state")
        if state is None:
            raise ValueError(f"{path}: no training state (a weights-only checkpoint?)")
        if int(state["world_size"]) != self.info.world_size:
            raise ValueError(
                f"{path} was written by {state['world_size']} ranks, this run has "
                f"{self.info.world_size}: the data order would differ"
            )
        load_state_dict_strict(self.model, ckpt.state_dict, str(path))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"][self.info.rank])
        self.step = int(state["step"])
        return self.step

    # -------------------------------------------------------------- one step
    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def train_step(self, samples: list[ClipSample]) -> tuple[StepRecord, dict[str, float]]:
        """Forward, backward, clip, optimizer and scheduler step on this rank's clips."""
        self.loss_module.train()
        for m in self.frozen:
            m.eval()  # frozen means frozen: BatchNorm statistics too
        with self._autocast():
            loss, scalars = self.loss_module(samples)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        params = [p for p in self.model.parameters() if p.requires_grad]
        clip = self.cfg.optim.grad_clip
        if clip > 0:
            gn = torch.nn.utils.clip_grad_norm_(params, clip)
        else:
            grads = [p.grad.detach().norm() for p in params if p.grad is not None]
            gn = torch.stack(grads).norm() if grads else torch.zeros(())
        loss_val = loss.detach().float()
        ok = torch.isfinite(loss_val) & torch.isfinite(gn.float())
        if self.info.enabled:
            # Every rank must take the same decision (and the same logged loss).
            flag = (~ok).float().reshape(1)
            dist.all_reduce(flag)
            ok = flag.item() == 0
            lv = loss_val.reshape(1).clone()
            dist.all_reduce(lv)
            loss_val = lv[0] / self.info.world_size
        lr = self.optimizer.param_groups[0]["lr"]
        if bool(ok):
            self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.step += 1
        rec = StepRecord(
            self.step,
            float(loss_val),
            float(gn),
            lr,
            not bool(ok),
            [f"{s.index}:{s.name}" for s in samples],
        )
        return rec, scalars

    # -------------------------------------------------------------- the loop
    def fit(self, steps: int | None = None, resume: bool | str = False) -> list[StepRecord]:
        """Trains until ``steps`` (default ``cfg.steps``); returns the step records."""
        cfg = self.cfg
        total = cfg.steps if steps is None else steps
        if resume:
            self.resume(None if resume is True else resume)
        main = self.info.is_main
        if main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.yaml").write_text(dump_yaml(cfg))
            self.logger = ScalarLogger(self.out / "logs", self._use_tb, append=bool(resume))
        data = clip_loader(self.dataset, self.step, cfg, self.info)
        bar = (
            ProgressBar(total, self.step, every=cfg.log_every) if main and not self.quiet else None
        )
        if main and not self.quiet:
            n = sum(p.numel() for p in self.model.parameters())
            print(
                f"training {self.model.config.name} ({n / 1e6:.2f} M parameters) on "
                f"{self.device} x {self.info.world_size}, steps {self.step} -> {total}, "
                f"{len(self.dataset)} clip windows, amp {self.amp_dtype}, logs: "
                f"{self.logger.backend if self.logger else '-'} in {self.out / 'logs'}",
                file=sys.stderr,
            )
        records: list[StepRecord] = []
        t_last = t_start = time.perf_counter()
        start_step, upper = self.step, total
        probe: tuple[int, float] | None = None  # (step, time) after the first, slower steps
        while self.step < total:
            t0 = time.perf_counter()
            samples = next(data)
            t1 = time.perf_counter()
            rec, scalars = self.train_step(samples)
            t2 = time.perf_counter()
            records.append(rec)
            if cfg.time_budget_s > 0:
                done = self.step - start_step
                if probe is None and done == BUDGET_WARMUP_STEPS:
                    probe = (self.step, t2)
                if probe is not None and (
                    self.step - probe[0] == BUDGET_PROBE_STEPS
                    or (self.step - probe[0] > BUDGET_PROBE_STEPS and done % cfg.log_every == 0)
                ):
                    step_s = (t2 - probe[1]) / (self.step - probe[0])
                    total = budget_total_steps(
                        self.step, cfg.time_budget_s - (t2 - t_start), step_s, upper
                    )
                    cfg.steps = total  # the schedule's lambda reads it
                elif t2 - t_start >= cfg.time_budget_s:
                    total = cfg.steps = self.step
            if main:
                frames = sum(s.num_frames for s in samples) * self.info.world_size
                step_s = t2 - t_last
                t_last = t2
                log = {
                    "train/loss": rec.loss,
                    "train/lr": rec.lr,
                    "train/grad_norm": rec.grad_norm,
                    "train/step_time_s": step_s,
                    "train/data_time_s": t1 - t0,
                    "train/clips_per_s": len(samples) * self.info.world_size / step_s,
                    "train/frames_per_s": frames / step_s,
                    "train/skipped": float(rec.skipped),
                }
                log.update({f"train/{k}": v for k, v in scalars.items()})
                if self.logger is not None and (
                    rec.step % cfg.log_every == 0 or rec.step == total or rec.skipped
                ):
                    self.logger.log(rec.step, log)
                if bar is not None:
                    bar.update(
                        rec.step,
                        {"loss": rec.loss, "lr": rec.lr, "clips/s": log["train/clips_per_s"]},
                    )
            if self._stop_requested():
                # SIGTERM / SIGINT: keep the finished step (resume continues from it).
                self.save()
                if main and not self.quiet:
                    print(f"\nstopped at step {self.step}; saved {self.ckpt_dir}", file=sys.stderr)
                break
            if cfg.ckpt_every > 0 and (self.step % cfg.ckpt_every == 0 or self.step == total):
                self.save()
            if self.val_dataset is not None and cfg.val.every > 0:
                if self.step % cfg.val.every == 0 or self.step == total:
                    self.run_validation()
        if bar is not None:
            bar.close()
        if main and self.step >= total:
            save_checkpoint(self.model, self.out / "model_final.pt", {"step": self.step})
        if self.logger is not None:
            self.logger.close()
            self.logger = None
        return records

    def request_stop(self, *_: Any) -> None:
        """Stop after the current step, saving a checkpoint (installed as the SIGTERM / SIGINT
        handler by the command line)."""
        self._stop = True

    def _stop_requested(self) -> bool:
        stop = self._stop
        if self.info.enabled:
            # Every rank must stop at the same step (save() is collective).
            flag = torch.tensor([float(stop)], device=self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            stop = bool(flag.item())
        return stop

    def run_validation(self) -> dict[str, float] | None:
        """Validation on rank 0 (the others wait); logged under ``val/``."""
        metrics = None
        if self.info.is_main and self.val_dataset is not None:
            t0 = time.perf_counter()
            metrics = validate(
                self.model,
                self.val_dataset,
                self.cfg.val.num_clips,
                self.cfg.seed,
                self.cfg.val.prompt,
            )
            metrics["time_s"] = time.perf_counter() - t0
            if self.logger is not None:
                self.logger.log(self.step, {f"val/{k}": v for k, v in metrics.items()})
            if not self.quiet:
                text = " ".join(f"{k}={v:.3f}" for k, v in metrics.items())
                print(f"\nstep {self.step} validation: {text}", file=sys.stderr)
        if self.info.enabled:
            dist.barrier()
        return metrics

    def close(self) -> None:
        if self.info.enabled and dist.is_initialized():
            dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------
# Command line.


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m training.train",
        description="Train SAM4D on clips with simulated interactive prompts.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "named configs (training/configs/): "
            + ", ".join(named_configs())
            + "\ndistributed: torchrun --nproc_per_node N -m training.train ... (gloo on CPU, "
            "nccl on CUDA; rank 0 logs and saves)"
        ),
    )
    p.add_argument("--config", required=True, help="a named config or a YAML file")
    p.add_argument("--out", required=True, type=Path, help="run directory")
    p.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=False,
        help="continue from OUT/checkpoints/last.pt (or from the given checkpoint)",
    )
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--steps", type=int, default=None, help="override the number of steps")
    p.add_argument("--seed", type=int, default=None, help="override the seed")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--workers", type=int, default=None, help="data loader workers")
    p.add_argument("--amp", choices=("auto", "bf16", "fp16", "off"), default=None)
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config value (YAML value), e.g. optim.lr=1e-4 or "
        "data.sources[0].seeds=[0,8]; repeatable",
    )
    p.add_argument("--no-tensorboard", action="store_true", help="JSONL scalars only")
    p.add_argument("--print-config", action="store_true", help="print the config and exit")
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    cfg = load_train_config(args.config)
    sets = list(args.set)
    for flag, key in (
        ("steps", "steps"),
        ("seed", "seed"),
        ("threads", "num_threads"),
        ("workers", "data.num_workers"),
        ("amp", "optim.amp"),
    ):
        v = getattr(args, flag)
        if v is not None:
            sets.append(f"{key}={v}")
    return apply_overrides(cfg, sets) if sets else cfg


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = config_from_args(args)
    if args.print_config:
        print(dump_yaml(cfg))
        return 0
    if cfg.phases:
        return run_phases(cfg, args)
    if args.resume is True and not (args.out / "checkpoints" / "last.pt").is_file():
        print(f"error: nothing to resume in {args.out}", file=sys.stderr)
        return 2
    saved = args.out / "config.yaml"
    if args.resume and saved.is_file():
        # A resumed run continues the same recipe: a different --config / --set would silently
        # change it halfway (and overwrite config.yaml). Only the length and machine settings may.
        diffs = config_differences(load_train_config(saved), cfg)
        if diffs:
            print(
                f"error: {args.out} was trained with another config ({', '.join(diffs)} differ); "
                f"resume with --config {saved} (steps, threads and workers may change)",
                file=sys.stderr,
            )
            return 2
    trainer = Trainer(cfg, args.out, args.device, False if args.no_tensorboard else None)
    _train(trainer, args.resume)
    return 0


def _train(trainer: Trainer, resume: bool | str) -> bool:
    """Fits with SIGTERM / SIGINT as stop requests; True when the run reached its end."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, trainer.request_stop)
    try:
        trainer.fit(resume=resume)
    finally:
        trainer.close()
    return not trainer._stop


def run_phases(cfg: TrainConfig, args: argparse.Namespace) -> int:
    """A recipe (``cfg.phases``): each phase trains in ``OUT/<phase>/`` from the previous
    phase's ``model_final.pt``; the last one's is copied to ``OUT/model_final.pt``. Run again
    on the same OUT, finished phases are skipped and an interrupted one resumes."""
    phases = phase_configs(cfg)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "config.yaml").write_text(dump_yaml(cfg))
    previous: Path | None = None
    for name, phase_cfg in phases:
        out = args.out / name
        final = out / "model_final.pt"
        if previous is not None:
            phase_cfg.init_checkpoint = str(previous)
        if final.is_file():
            print(f"phase {name}: done before ({final})", file=sys.stderr)
            previous = final
            continue
        print(f"phase {name}: training into {out}", file=sys.stderr)
        resume = (out / "checkpoints" / "last.pt").is_file()
        trainer = Trainer(phase_cfg, out, args.device, False if args.no_tensorboard else None)
        if not _train(trainer, resume) or not final.is_file():
            print(f"phase {name} stopped before its end; run again to resume", file=sys.stderr)
            return 1
        previous = final
    assert previous is not None
    shutil.copyfile(previous, args.out / "model_final.pt")
    print(f"recipe done: {args.out / 'model_final.pt'}", file=sys.stderr)
    return 0


__all__ = [
    "ClipLossModule",
    "DistInfo",
    "StepRecord",
    "Trainer",
    "build_parser",
    "init_distributed",
    "main",
    "run_phases",
]


if __name__ == "__main__":
    sys.exit(main())
