# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""Per-stage latency of the eager PyTorch model and the export backends on the same inputs.

Stages: ``host`` (batch preparation; export backends only), ``vision`` (both towers), ``left`` (left
brain), ``right`` (right brain incl. state encoder), ``expert`` (N Euler steps), and ``total``
(end to end, measured separately, not the sum). The eager stages are timed by wrapping the model's own
stage methods on the instance for the duration of the benchmark (nothing is modified on disk).

Usage:
    python -m twinbrain_ros.export.bench --preset tiny --threads 2 --iters 30
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any


@contextlib.contextmanager
def _timed_eager(model, timings: dict[str, float]) -> Iterator[None]:
    """Time the eager model's stages by wrapping its methods on the instance."""
    brains = model.brains
    originals: list[tuple[Any, str, Callable]] = []

    def wrap(obj, name: str, stage: str, subtract: tuple[str, ...] = ()) -> None:
        fn = getattr(obj, name)

        def timed(*args, **kwargs):
            before = {s: timings.get(s, 0.0) for s in subtract}
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            spent = time.perf_counter() - t0
            spent -= sum(timings.get(s, 0.0) - before[s] for s in subtract)  # nested stages
            timings[stage] = timings.get(stage, 0.0) + spent
            return out

        originals.append((obj, name, fn))
        setattr(obj, name, timed)

    wrap(brains.left, "image_features", "vision")
    wrap(brains.right, "image_features", "vision")
    wrap(brains, "run_left", "left", subtract=("vision",))
    wrap(brains, "run_right", "right", subtract=("vision",))
    wrap(model.action_expert, "sample", "expert")
    try:
        yield
    finally:
        for obj, name, _ in reversed(originals):
            if name in vars(obj):  # drop the instance attribute: the class method is back
                delattr(obj, name)


def _eager_once(model, tb, tn) -> dict[str, float]:
    import torch

    timings: dict[str, float] = {}
    with torch.no_grad(), _timed_eager(model, timings):
        t0 = time.perf_counter()
        model.sample_actions(tb, noise=tn)
        timings["total"] = time.perf_counter() - t0
    return timings


def _runner_once(runner, batch, noise) -> dict[str, float]:
    t0 = time.perf_counter()
    runner.infer(batch, noise=noise)
    total = time.perf_counter() - t0
    return {**runner.last_timings, "total": total}


def bench_blocks(
    model, runners: dict[str, Any], batch, noise, iters: int, rounds: int = 3, warmup: int = 2
) -> dict[str, dict[str, float]]:
    """Median seconds per stage over ``rounds`` rounds of ``iters // rounds`` calls per backend.

    Backends run in blocks (never two at once, so their thread pools do not spin against each other),
    and the rounds alternate, so load changes on a shared machine hit every backend alike.
    """
    import torch

    from twinbrain_ros.export.verify import torch_batch

    tb, tn = torch_batch(batch), torch.as_tensor(noise)
    calls = {"torch-eager": lambda: _eager_once(model, tb, tn)}
    for name, runner in runners.items():
        calls[name] = lambda r=runner: _runner_once(r, batch, noise)
    for call in calls.values():
        for _ in range(warmup):
            call()
    runs: dict[str, list[dict[str, float]]] = {n: [] for n in calls}
    per_round = max(1, iters // rounds)
    for _ in range(rounds):
        for name, call in calls.items():
            runs[name] += [call() for _ in range(per_round)]
    return {
        name: {k: statistics.median(r.get(k, 0.0) for r in rs) for k in rs[0]} for name, rs in runs.items()
    }


def format_table(results: dict[str, dict[str, float]], reference: str = "torch-eager") -> str:
    """Milliseconds per stage, one column per backend, with the speed-up over ``reference``."""
    stages = ["host", "vision", "left", "right", "expert", "total"]
    names = list(results)
    lines = ["stage    " + "".join(f"{n:>18}" for n in names)]
    for s in stages:
        row = f"{s:<9}"
        for n in names:
            v = results[n].get(s)
            row += f"{'-':>18}" if v is None else f"{v * 1e3:>15.2f} ms"
        lines.append(row)
    ref = results.get(reference, {}).get("total")
    if ref:
        lines.append("speed-up " + "".join(f"{ref / results[n]['total']:>17.2f}x" for n in names))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Export a preset (or reuse an export), then time eager PyTorch and ONNX Runtime on CPU."""
    import torch

    from twinbrain_ros.export.inputs import synthetic_batch, synthetic_noise
    from twinbrain_ros.export.onnx_export import export_onnx, load_bundle
    from twinbrain_ros.export.runners import OrtRunner
    from twinbrain_ros.model import TwinBrainModel, preset

    ap = argparse.ArgumentParser(prog="python -m twinbrain_ros.export.bench")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--export-dir", default="", help="reuse this export of the same preset and seed")
    ap.add_argument("--out", default="", help="where to export (default: a temporary directory)")
    ap.add_argument("--cameras", type=int, default=1)
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--text-bucket", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ort-int8", action="store_true", help="also time the onnxruntime-int8 variant")
    ap.add_argument(
        "--no-share-vision",
        action="store_true",
        help="export two vision graphs even when the towers are equal (a trained right brain)",
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = TwinBrainModel(preset(args.preset)).eval()
    if args.export_dir:
        bundle = load_bundle(args.export_dir)
    else:
        import tempfile

        from twinbrain_ros.export.graphs import host_spec_for
        from twinbrain_ros.export.host import Profile
        from twinbrain_ros.export.inputs import prompt_lengths

        spec = host_spec_for(model)
        draft = Profile("d", 1, args.cameras, args.image_size, args.image_size, 1, 1)
        left, right = prompt_lengths(spec, draft, args.text_bucket)
        profile = Profile(
            f"bench-{args.preset}", 1, args.cameras, args.image_size, args.image_size, left, right
        )
        out = args.out or tempfile.mkdtemp(prefix=f"twinbrain-bench-{args.preset}-")
        share = False if args.no_share_vision else None
        bundle = export_onnx(model, profile, out, seed=args.seed, share_vision=share)
    batch = synthetic_batch(bundle.spec, bundle.profile, seed=args.seed)
    noise = synthetic_noise(bundle.spec, bundle.profile.batch_size, seed=args.seed)
    runners = {"onnxruntime-cpu": OrtRunner(bundle, intra_op_threads=args.threads)}
    if args.ort_int8:
        from twinbrain_ros.export.quantize import ORT_INT8, add_ort_int8_variant

        if ORT_INT8 not in bundle.meta.get("variants", {}):
            add_ort_int8_variant(bundle)
        runners["onnxruntime-int8"] = OrtRunner(bundle, intra_op_threads=args.threads, variant=ORT_INT8)
    results = bench_blocks(model, runners, batch, noise, args.iters)
    params = sum(p.numel() for p in model.parameters())
    print(
        f"preset {args.preset} ({params / 1e6:.1f} M params), profile {bundle.profile.name}, "
        f"{'1 vision graph (towers equal)' if bundle.share_vision else '2 vision graphs'}, "
        f"{args.threads} threads, median of {args.iters} runs in alternating blocks"
    )
    print(format_table(results))
    if args.json:
        print(
            json.dumps(
                {
                    "preset": args.preset,
                    "profile": bundle.profile.to_dict(),
                    "threads": args.threads,
                    "share_vision": bundle.share_vision,
                    "ms": {b: {k: round(v * 1e3, 3) for k, v in r.items()} for b, r in results.items()},
                }
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
