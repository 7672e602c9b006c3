# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""``twinbrain export`` and ``twinbrain verify``: argument definitions and entry points.

The top-level CLI wires them as::

    p = sub.add_parser("export", help=...); add_export_args(p); p.set_defaults(func=export_main)
    p = sub.add_parser("verify", help=...); add_verify_args(p); p.set_defaults(func=verify_main)

Both return a process exit code (0 ok, 1 verification/check failure, 2 usage error).

Usage:
    twinbrain export models/demo --cameras 1 --text-bucket 32            # ONNX + ORT parity check
    twinbrain export models/demo --dtype bfloat16 --engine               # + TensorRT engines (GPU)
    twinbrain export --export-dir models/demo/export/b1-c1-256x256-l120-r140 --engine --quantize-left fp8
    twinbrain export --check models/demo/export/...                      # TensorRT op-support check only
    twinbrain verify models/demo --backend onnxruntime --export-dir models/demo/export/...
    twinbrain verify --preset tiny --backend torch-graphs
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

LOG = logging.getLogger("twinbrain.export")
_DTYPES = ("float32", "float16", "bfloat16")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", default=None, help="checkpoint directory (models/<name>)")
    p.add_argument("--preset", default="", help="random-init model of a preset instead (tiny, small150m)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random init and synthetic inputs")


def _add_profile_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("deployment profile (fixes every graph shape)")
    g.add_argument("--profile", default="", help="profile name (default: derived from the sizes)")
    g.add_argument("--batch-size", type=int, default=1)
    g.add_argument("--cameras", type=int, default=1, help="views per sample")
    g.add_argument(
        "--image-size",
        default="auto",
        help="HxW pixels at the vision tower (after the image processor), e.g. 256x256; "
        "auto: from the checkpoint's processor settings (256x256 for presets)",
    )
    g.add_argument("--text-bucket", type=int, default=32, help="instruction tokens the text buckets allow")
    g.add_argument(
        "--left-len", type=int, default=0, help="explicit left text bucket (overrides --text-bucket)"
    )
    g.add_argument(
        "--right-len", type=int, default=0, help="explicit right text bucket (overrides --text-bucket)"
    )
    g.add_argument("--num-steps", type=int, default=0, help="Euler steps unrolled (default: the model's)")


def add_export_args(p: argparse.ArgumentParser) -> None:
    """Arguments of ``twinbrain export``."""
    _add_model_args(p)
    _add_profile_args(p)
    p.add_argument("--out", default="", help="export directory (default: <model>/export/<profile>)")
    p.add_argument(
        "--dtype",
        choices=_DTYPES,
        default="float32",
        help="brains' dtype in the graphs (the expert stays float32); typed graphs feed "
        "strongly typed TensorRT builds, float32 graphs are checked in ONNX Runtime",
    )
    p.add_argument("--graphs", nargs="*", default=None, help="export only these graphs")
    p.add_argument("--no-verify", action="store_true", help="skip the ONNX Runtime parity check")
    p.add_argument(
        "--ort-int8",
        action="store_true",
        help="also write ONNX Runtime dynamic-INT8 graphs for CPU (backend onnxruntime-int8); kept only "
        "if the chunk's cosine vs PyTorch is >= 0.999",
    )
    p.add_argument(
        "--check",
        metavar="EXPORT_DIR",
        default="",
        help="only run the TensorRT op-support check on an existing export",
    )
    g = p.add_argument_group("TensorRT engines (needs TensorRT and a GPU)")
    g.add_argument("--engine", action="store_true", help="build TensorRT engines after exporting")
    g.add_argument(
        "--export-dir", default="", help="build engines for this existing export (skip the export)"
    )
    g.add_argument(
        "--precision",
        choices=("auto", "fp16", "bf16"),
        default="auto",
        help="auto: strongly typed from the graph dtypes; fp16/bf16: TensorRT 10 builder flags",
    )
    g.add_argument(
        "--quantize-left",
        choices=("int8", "fp8"),
        default=None,
        help="INT8 or FP8 Q/DQ for the frozen left brain (weights per channel, activations calibrated)",
    )
    g.add_argument("--workspace-gib", type=float, default=8.0)
    g.add_argument("--opt-level", type=int, default=3)
    g.add_argument("--hardware-compatible", action="store_true", help="Ampere-plus compatible plans")
    g.add_argument("--version-compatible", action="store_true", help="version-compatible plans")
    g.add_argument("--device", default="cuda:0", help="GPU the engines are built for")
    p.add_argument("--json", action="store_true", help="print a JSON summary line last")


def add_verify_args(p: argparse.ArgumentParser) -> None:
    """Arguments of ``twinbrain verify``."""
    from twinbrain_ros.export.runners import BACKENDS

    _add_model_args(p)
    _add_profile_args(p)
    p.add_argument(
        "--backend",
        required=True,
        choices=list(BACKENDS),
        help="backend compared with the eager PyTorch model",
    )
    p.add_argument("--export-dir", default="", help="export directory (onnxruntime*, tensorrt)")
    p.add_argument(
        "--device", default="cpu", help="device of the torch-graphs backend (cuda: compiled + CUDA graph)"
    )
    p.add_argument("--compile", action="store_true", help="torch-graphs: torch.compile the graphs")
    p.add_argument(
        "--expert", choices=("loop", "step"), default="loop", help="unrolled expert graph or N step calls"
    )
    p.add_argument("--seeds", type=int, default=2, help="number of fixed batches")
    p.add_argument("--threshold", type=float, default=0.999, help="cosine threshold on the chunk")
    p.add_argument("--atol", type=float, default=None, help="optional max |error| bound")
    p.add_argument("--json", action="store_true", help="print a JSON result line last")


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------
def load_model(args: argparse.Namespace, dtype: str = "float32"):
    """``(model, checkpoint_or_None)`` from ``args.model`` or ``args.preset``.

    Raises:
        SystemExit: (code 2) when neither or both are given.
    """
    import torch

    if bool(args.model) == bool(args.preset):
        raise SystemExit("give a checkpoint directory or --preset (not both)")
    if args.preset:
        from twinbrain_ros.model import TwinBrainModel, preset

        torch.manual_seed(args.seed)
        model = TwinBrainModel(preset(args.preset)).eval()
        if dtype != "float32":
            model.brains.to(getattr(torch, dtype))
            if model.state_encoder is not None:
                model.state_encoder.to(getattr(torch, dtype))
        return model, None
    from twinbrain_ros.model.checkpoint import load_checkpoint

    ckpt = load_checkpoint(args.model, device="cpu", dtype=dtype)
    return ckpt.model.eval(), ckpt


def _tower_size(model, ckpt) -> tuple[int, int]:
    """Pixel size the vision tower sees for the checkpoint's view size (runs its image processor)."""
    vision = model.config.backbone["vision_config"]
    patch = int(vision.get("patch_size", 16))
    if ckpt is None:
        return 16 * patch, 16 * patch  # a 224^2 view becomes 256^2 at patch 16
    import numpy as np
    from PIL import Image

    from twinbrain_ros.model.processing import make_image_processor

    pc = ckpt.processor_config
    image = Image.fromarray(np.zeros((pc.image_height, pc.image_width, 3), dtype=np.uint8))
    grid = make_image_processor(model.config, pc)(images=[image], return_tensors="np")["image_grid_thw"][0]
    return int(grid[1]) * patch, int(grid[2]) * patch


def _text_lengths(ckpt, spec, profile, bucket: int) -> tuple[int, int]:
    """Text buckets for ``bucket`` instruction tokens, measured with the checkpoint's tokenizer."""
    from twinbrain_ros.export.inputs import prompt_lengths

    left, right = prompt_lengths(spec, profile, bucket)
    if ckpt is None:
        return left, right
    try:
        from twinbrain_ros.model.processing import chat_prompt

        cfg, tok = ckpt.config, ckpt.tokenizer
        views = [profile.tokens_per_image(spec)] * profile.num_cameras
        system = ckpt.processor_config.system_prompt
        left_ids = tok(chat_prompt(cfg.format_left_text(""), views, system))["input_ids"]
        right_ids = list(tok(chat_prompt(cfg.format_right_text(""), views, system))["input_ids"])
        last = max(i for i, t in enumerate(right_ids) if t == spec.action_token_id)
        margin = 2  # BPE merges at the instruction's boundaries
        return len(left_ids) + bucket + margin, last + 1 + bucket + margin
    except Exception as exc:  # noqa: BLE001 - fall back to the template estimate, but say so
        LOG.warning("could not measure prompt lengths with the tokenizer (%s); using estimates", exc)
        return left, right


def build_profile(args: argparse.Namespace, model, ckpt):
    """The deployment profile from the arguments."""
    from twinbrain_ros.export.graphs import host_spec_for
    from twinbrain_ros.export.host import Profile

    spec = host_spec_for(model, args.num_steps or None)
    if args.image_size == "auto":
        height, width = _tower_size(model, ckpt)
    else:
        try:
            height, width = (int(v) for v in args.image_size.lower().split("x"))
        except ValueError:
            raise SystemExit(f"--image-size must look like 256x256, got {args.image_size!r}") from None
    draft = Profile("draft", args.batch_size, args.cameras, height, width, 1, 1)
    left, right = _text_lengths(ckpt, spec, draft, args.text_bucket)
    left, right = args.left_len or left, args.right_len or right
    name = args.profile or f"b{args.batch_size}-c{args.cameras}-{height}x{width}-l{left}-r{right}"
    return Profile(name, args.batch_size, args.cameras, height, width, left, right), spec


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    for noisy in ("torch.onnx", "onnxscript", "onnx_ir", "torch._export", "torch.export"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


# --------------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------------
def export_main(args: argparse.Namespace) -> int:
    """``twinbrain export``: ONNX export (+ ORT parity, op-support check) and optionally engines."""
    _setup_logging()
    from twinbrain_ros.export.onnx_export import export_onnx, load_bundle
    from twinbrain_ros.export.op_support import check_files

    summary: dict[str, Any] = {}
    if args.check:
        bundle = load_bundle(args.check)
        report = check_files(bundle.graph_path(g) for g in bundle.graphs)
        print(report.format())
        return 0 if report.ok else 1
    if args.export_dir:
        bundle = load_bundle(args.export_dir)
        if not args.engine:
            raise SystemExit("--export-dir without --engine does nothing (use --check to check it)")
    else:
        model, ckpt = load_model(args, args.dtype)
        profile, _ = build_profile(args, model, ckpt)
        out = (
            Path(args.out)
            if args.out
            else Path(args.model or f"models/{args.preset}") / "export" / profile.name
        )
        if args.dtype != "float32" and not args.out:
            out = out.with_name(f"{profile.name}-{args.dtype}")
        print(f"[export] profile {profile.name}: {profile.to_dict()}")
        bundle = export_onnx(
            model, profile, out, num_steps=args.num_steps or None, graphs=args.graphs, seed=args.seed
        )
        print(
            f"[export] wrote {len(bundle.graphs)} graphs to {out} "
            f"in {sum(bundle.meta['export_seconds'].values()):.1f} s"
        )
        summary.update(export_dir=str(out), graphs=sorted(bundle.graphs), profile=profile.to_dict())
        if not args.no_verify and args.dtype == "float32":
            from twinbrain_ros.export.verify import verify_graphs

            report = verify_graphs(model, bundle, seed=args.seed)
            print(report.format())
            summary["onnxruntime_parity"] = report.ok
            if not report.ok:
                return 1
        if args.ort_int8:
            if args.dtype != "float32":
                raise SystemExit("--ort-int8 needs a float32 export")
            from twinbrain_ros.export.quantize import ORT_INT8, add_ort_int8_variant
            from twinbrain_ros.export.runners import OrtRunner
            from twinbrain_ros.export.verify import verify_backend

            add_ort_int8_variant(bundle)
            report = verify_backend(model, OrtRunner(bundle, variant=ORT_INT8), bundle.spec, bundle.profile)
            print(report.format())
            summary["ort_int8_parity"] = report.ok
            if not report.ok:
                bundle.meta["variants"].pop(ORT_INT8)
                bundle.save()
                print("[export] ort-int8 graphs dropped: they miss the cosine threshold")
        elif args.dtype != "float32":
            print(
                f"[export] {args.dtype} graphs are not run in ONNX Runtime (no CPU kernels); verify the "
                "engines with `twinbrain verify --backend tensorrt`"
            )
    report = check_files(bundle.graph_path(g) for g in bundle.graphs)
    print(report.format())
    summary["tensorrt_op_check"] = report.ok
    if args.engine:
        if not report.ok:
            return 1
        from twinbrain_ros.export.trt_build import build_engines

        try:
            manifest = build_engines(
                bundle,
                precision=args.precision,
                quantize_left=args.quantize_left,
                workspace_gib=args.workspace_gib,
                opt_level=args.opt_level,
                hardware_compatibility="ampere_plus" if args.hardware_compatible else "none",
                version_compatible=args.version_compatible,
                device=args.device,
            )
        except ImportError as exc:
            print(f"[export] {exc}", file=sys.stderr)
            return 2
        print(
            f"[export] engines in {manifest.directory} (TensorRT {manifest.tensorrt_version}, {manifest.sm})"
        )
        summary["engine_dir"] = str(manifest.directory)
    if args.json:
        print(json.dumps(summary))
    return 0 if report.ok else 1


def verify_main(args: argparse.Namespace) -> int:
    """``twinbrain verify --backend NAME``: compare a backend with PyTorch; non-zero exit on failure."""
    _setup_logging()
    from twinbrain_ros.export.onnx_export import load_bundle
    from twinbrain_ros.export.runners import load_runner
    from twinbrain_ros.export.verify import verify_backend

    model, ckpt = load_model(args)
    needs_export = args.backend != "torch-graphs"
    if needs_export and not args.export_dir:
        raise SystemExit(f"--backend {args.backend} needs --export-dir (run `twinbrain export` first)")
    if args.export_dir:
        bundle = load_bundle(args.export_dir)
        profile, spec = bundle.profile, bundle.spec
    else:
        profile, spec = build_profile(args, model, ckpt)
    options: dict[str, Any] = {}
    if args.backend == "torch-graphs":
        import torch

        device = torch.device(args.device)
        if device.type == "cuda":
            model.to(device)
        options.update(compile=args.compile, num_steps=spec.num_steps)
    else:
        options["expert"] = args.expert
    try:
        runner = load_runner(
            args.backend,
            export_dir=args.export_dir or None,
            model=model,
            profile=profile,
            device=args.device,
            **options,
        )
    except (ImportError, ValueError) as exc:  # no TensorRT/GPU, or a refused engine: say why, exit non-zero
        print(f"[verify] {args.backend}: {exc}", file=sys.stderr)
        return 2
    try:
        report = verify_backend(
            model, runner, spec, profile, seeds=range(args.seeds), threshold=args.threshold, atol=args.atol
        )
    finally:
        runner.close()
    print(report.format())
    if args.json:
        print(report.to_json())
    return 0 if report.ok else 1


def main(argv: list[str] | None = None) -> int:
    """Standalone entry (``python -m twinbrain_ros.export.cli export|verify ...``)."""
    ap = argparse.ArgumentParser(prog="twinbrain-export")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("export", help="export ONNX graphs (and TensorRT engines)")
    add_export_args(p)
    p.set_defaults(func=export_main)
    p = sub.add_parser("verify", help="compare a backend with PyTorch")
    add_verify_args(p)
    p.set_defaults(func=verify_main)
    args = ap.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
