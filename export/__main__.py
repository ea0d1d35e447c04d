"""``python -m sam4d_export {onnx,build-engines,bench}`` (see the package docstring)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def _build_model(config: str | None, checkpoint: str | None, seed: int):
    import torch

    from sam4d_core.build_sam import build_sam4d

    if config is None and checkpoint is None:
        from sam4d_core.weights import bundled_model_path

        checkpoint = str(bundled_model_path())
    torch.manual_seed(seed)
    return build_sam4d(config, checkpoint).float(), checkpoint


def cmd_onnx(args: argparse.Namespace) -> int:
    from .onnx_export import export_onnx

    model, checkpoint = _build_model(args.config, args.checkpoint, args.seed)
    manifest = export_onnx(
        model, args.out, opset=args.opset, checkpoint=checkpoint, verify=not args.no_verify
    )
    print(f"{len(manifest.stages)} stages of {manifest.config_name!r} -> {args.out}")
    for name, e in manifest.stages.items():
        worst = max(e.max_abs_error.values()) if e.max_abs_error else float("nan")
        print(f"  {name:22s} {e.file:28s} max |onnx - torch| {worst:.2e}")
    return 0


def cmd_build_engines(args: argparse.Namespace) -> int:
    from sam4d_core.runtime.manifest import RuntimeSetupError
    from sam4d_core.runtime.model_runtime import load_stages

    model, _ = _build_model(args.config, args.checkpoint, 0)
    model = model.to(args.device)
    try:
        stages = load_stages(
            "tensorrt",
            model,
            args.onnx_dir,
            engine_dir=args.engine_dir,
            precision=args.precision,
        )
    except RuntimeSetupError as e:
        print(f"build-engines: {e}", file=sys.stderr)
        return 2
    for name, st in stages.items():
        print(f"  {name:22s} {getattr(st, 'engine_path', '?')}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sam4d_export", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("onnx", help="export every tracker stage to ONNX + manifest.json")
    p.add_argument("--config", default=None, help="config name / JSON (default: the checkpoint's)")
    p.add_argument("--checkpoint", default=None, help="checkpoint (default: the bundled model)")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (>= 18)")
    p.add_argument("--seed", type=int, default=0, help="seed of random weights (no checkpoint)")
    p.add_argument("--no-verify", action="store_true", help="skip the ONNX Runtime comparison")
    p.set_defaults(fn=cmd_onnx)
    p = sub.add_parser("build-engines", help="build the TensorRT engines of an export (cached)")
    p.add_argument("--onnx-dir", required=True, type=Path)
    p.add_argument("--config", default=None)
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--engine-dir", type=Path, default=None, help="default <onnx-dir>/engines")
    p.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default="fp16")
    p.add_argument("--device", default="cuda")
    p.set_defaults(fn=cmd_build_engines)
    p = sub.add_parser("bench", help="tracker step: PyTorch eager vs ONNX Runtime")
    from .bench import add_arguments, run_bench

    add_arguments(p)
    p.set_defaults(fn=run_bench)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return int(args.fn(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
