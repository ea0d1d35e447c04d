"""A model's stages on one runtime, called by :class:`SAM4D` at its stage boundaries.

``install_runtime(model, "onnxruntime", onnx_dir)`` sets ``model.stage_runtime``; from then on
:meth:`SAM4D.encode_frame`, :meth:`SAM4D.track_step` and :meth:`SAM4D.encode_memory` send the dense
stages (:mod:`sam4d_core.runtime.stages`) to it and keep everything else (LiDAR encoder, UMPE,
prompt encoding, memory bank) in PyTorch. ``"torch"`` removes it (the model's own code path).

A call the exported graphs do not cover (a frame with only one modality in memory attention)
runs the PyTorch module instead and is counted in :attr:`ModelRuntime.fallbacks`.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from sam4d_core.runtime.backends import (
    RUNTIMES,
    OnnxRuntimeStage,
    StageBackend,
    TorchStage,
    require_onnxruntime,
)
from sam4d_core.runtime.manifest import Manifest, RuntimeSetupError, sha256_file
from sam4d_core.runtime.stages import STAGE_NAMES, stage_module, stage_specs

if TYPE_CHECKING:
    from sam4d_core.modeling.memory_attention import AttentionPlaces, MemoryAttention
    from sam4d_core.modeling.sam4d_base import SAM4D

LOG = logging.getLogger(__name__)


class ModelRuntime:
    """The stages of one model on one runtime (:data:`~sam4d_core.runtime.backends.RUNTIMES`).

    Attributes:
        kind: the runtime.
        stages: {stage name: backend}.
        fallbacks: calls that ran in PyTorch because no exported graph covers them, by reason.
    """

    def __init__(self, kind: str, stages: dict[str, StageBackend], dtype: torch.dtype) -> None:
        self.kind = kind
        self.stages = stages
        self.dtype = dtype
        self.fallbacks: Counter[str] = Counter()

    def _run(self, name: str, **inputs: torch.Tensor) -> list[torch.Tensor]:
        outs = self.stages[name].run(inputs)
        return [o.to(self.dtype) if o.is_floating_point() else o for o in outs]

    # The calls SAM4D makes (shapes: stages.stage_specs).
    def image_encoder(self, images: torch.Tensor) -> list[torch.Tensor]:
        """images (N, 3, H, W) -> [tokens, high_res_0, high_res_1]."""
        return self._run("image_encoder", images=images)

    def memory_attention(self, **inputs: torch.Tensor) -> list[torch.Tensor]:
        """MCMA of a multi-modal frame -> [image_out (B, Ni, C), points_out (B, Np, C)]."""
        return self._run("memory_attention", **inputs)

    def attend(
        self,
        attention: MemoryAttention,
        image: torch.Tensor | None,
        image_pos: torch.Tensor | None,
        points: torch.Tensor | None,
        points_pos: torch.Tensor | None,
        memory: torch.Tensor,
        memory_pos: torch.Tensor,
        valid: torch.Tensor | None,
        places: AttentionPlaces | None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """:meth:`MemoryAttention.forward` (same arguments) on this runtime: the distance tables
        are computed here in PyTorch (Python-side token bookkeeping) and passed to the graph; a
        frame with one modality runs ``attention`` itself (the graph is the multi-modal one)."""
        if image is None or points is None:
            self.note_fallback("memory attention on a frame with one modality")
            return attention(
                image, image_pos, points, points_pos, memory, memory_pos, valid, places=places
            )
        b, length = memory.shape[:2]
        inputs = {
            "image": image,
            "image_pos": image_pos,
            "points": points,
            "points_pos": points_pos,
            "memory": memory,
            "memory_pos": memory_pos,
            # All True = no padding (PyTorch's None).
            "memory_valid": (
                torch.ones(b, length, dtype=torch.bool, device=memory.device)
                if valid is None
                else valid
            ),
        }
        if attention.distance_scales is not None:
            d_img, d_pts = attention.distance_tables(places, [True, True], memory)
            assert d_img is not None and d_pts is not None
            # The graph takes per-object tables (no broadcasting axis in its signature).
            inputs["image_distances"] = d_img.expand(b, -1, -1)
            inputs["points_distances"] = d_pts.expand(b, -1, -1)
        ia, pa = self.memory_attention(**inputs)  # type: ignore[arg-type]
        return ia, pa

    def mask_decoder_image(self, **inputs: torch.Tensor) -> list[torch.Tensor]:
        """-> [masks (B, 4, 4h, 4w), iou_pred, mask_tokens, object_score_logits]."""
        return self._run("mask_decoder_image", **inputs)

    def mask_decoder_lidar(self, **inputs: torch.Tensor) -> list[torch.Tensor]:
        """-> [masks (B, 4, N4), iou_pred, mask_tokens, object_score_logits]."""
        return self._run("mask_decoder_lidar", **inputs)

    def image_memory_encoder(self, pix_feat: torch.Tensor, mask_in: torch.Tensor) -> torch.Tensor:
        """pix_feat (Ncam, C, h, w), mask_in (B, Ncam, H, W) -> (B, Ncam, C, h, w)."""
        return self._run("image_memory_encoder", pix_feat=pix_feat, mask_in=mask_in)[0]

    def note_fallback(self, reason: str) -> None:
        if not self.fallbacks[reason]:
            LOG.warning("%s runtime: %s; this call runs in PyTorch", self.kind, reason)
        self.fallbacks[reason] += 1


def load_stages(
    kind: str,
    model: SAM4D,
    onnx_dir: str | Path | None = None,
    threads: int = 0,
    checkpoint: str | Path | None = None,
    engine_dir: str | Path | None = None,
    precision: str = "fp16",
) -> dict[str, StageBackend]:
    """Every stage of ``model`` on runtime ``kind``.

    Args:
        kind: "torch", "onnxruntime" or "tensorrt".
        model: the model (its config must match the export's manifest).
        onnx_dir: the export directory (``python -m sam4d_export onnx``); not for "torch".
        threads: ONNX Runtime intra-op threads (0: its default).
        checkpoint: when given, its SHA-256 must be the one the export recorded.
        engine_dir: TensorRT engine cache (default ``<onnx_dir>/engines``).
        precision: TensorRT precision ("fp32", "fp16", "bf16").

    Raises:
        RuntimeSetupError: unknown runtime, a missing package or file, or an export of another
            model; the message says how to fix it.
    """
    if kind not in RUNTIMES:
        raise RuntimeSetupError(f"unknown runtime {kind!r}; choose one of {RUNTIMES}")
    specs = stage_specs(model)
    if kind == "torch":
        return {n: TorchStage(n, stage_module(model, n), specs[n].input_names) for n in STAGE_NAMES}
    if onnx_dir is None or str(onnx_dir) == "":
        raise RuntimeSetupError(
            f"runtime {kind!r} needs the ONNX export directory (model.onnx_dir); make it with "
            "`python -m sam4d_export onnx --checkpoint CK --out DIR`"
        )
    if kind == "onnxruntime":
        require_onnxruntime()
    else:
        from sam4d_core.runtime.tensorrt_backend import require_tensorrt

        require_tensorrt()
    manifest = Manifest.read(onnx_dir)
    manifest.check_model(model.config)
    if checkpoint is not None and manifest.checkpoint_sha256 is not None:
        digest = sha256_file(checkpoint)
        if digest != manifest.checkpoint_sha256:
            raise RuntimeSetupError(
                f"the ONNX export at {onnx_dir} was made from another checkpoint (sha256 "
                f"{manifest.checkpoint_sha256[:12]}, {checkpoint} has {digest[:12]}); export "
                "this checkpoint again"
            )
    paths = {n: manifest.stage_path(onnx_dir, n) for n in STAGE_NAMES}
    device = str(model.device)
    if kind == "onnxruntime":
        return {n: OnnxRuntimeStage(n, p, threads, device) for n, p in paths.items()}
    from sam4d_core.runtime.tensorrt_backend import TensorRTStage, dynamic_ranges

    cache = Path(engine_dir) if engine_dir is not None else Path(onnx_dir) / "engines"
    ranges = dynamic_ranges(model)
    return {
        n: TensorRTStage(n, p, specs[n], cache, precision=precision, ranges=ranges)
        for n, p in paths.items()
    }


def install_runtime(
    model: SAM4D,
    kind: str,
    onnx_dir: str | Path | None = None,
    threads: int = 0,
    checkpoint: str | Path | None = None,
    engine_dir: str | Path | None = None,
    precision: str = "fp16",
) -> ModelRuntime | None:
    """Makes ``model`` run its dense stages on ``kind`` (arguments: :func:`load_stages`).

    "torch" uninstalls (the model's own code path, exactly today's computation) and returns None.
    """
    if kind == "torch":
        model.stage_runtime = None
        return None
    stages = load_stages(kind, model, onnx_dir, threads, checkpoint, engine_dir, precision)
    rt = ModelRuntime(kind, stages, model.no_mem_embed.dtype)
    model.stage_runtime = rt
    return rt


__all__ = ["ModelRuntime", "install_runtime", "load_stages"]
