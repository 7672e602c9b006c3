# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""The ``twinbrain`` command-line tool.

Subcommands import what they need lazily, so ``twinbrain bringup`` starts on a machine without torch.

Usage:
    twinbrain doctor                      # check the environment
    twinbrain bringup demo [--duration S] # start a profile's nodes without `ros2 launch`
    twinbrain demo                        # run the demo graph and print a summary line
    twinbrain bench ros [--json]          # DDS image latency and controller timing
"""

from __future__ import annotations

import argparse
import sys


def _cmd_bringup(a: argparse.Namespace) -> int:
    from twinbrain_ros.bringup import command, load_profile, plan, profile_for, run

    profile = profile_for(a.profile, a.sim)
    nodes = plan(
        load_profile(profile), model=a.model, namespace=a.namespace, use_sim_time=a.use_sim_time,
        embodiment=a.embodiment,
    )
    if a.dry_run:
        for n in nodes:
            print(" ".join(command(n)))
        return 0
    print(f"[bringup] starting {[n.name for n in nodes]} from profile '{profile}'", file=sys.stderr)
    return run(nodes, duration=a.duration)


def _cmd_doctor(a: argparse.Namespace) -> int:
    from twinbrain_ros.doctor import main as doctor_main

    return doctor_main()


def _cmd_demo(a: argparse.Namespace) -> int:
    from twinbrain_ros.demo import main as demo_main

    return demo_main(a)


def _cmd_bench(a: argparse.Namespace) -> int:
    if a.what == "ros":
        from twinbrain_ros.bench.ros_bench import main as bench_main
    elif a.what == "model":
        from twinbrain_ros.bench.model_bench import main as bench_main
    elif a.what == "sim":
        from twinbrain_ros.bench.sim_bench import main as bench_main
    else:
        raise SystemExit(f"unknown benchmark '{a.what}'")
    return bench_main(a)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The argument parser (also used to document the CLI)."""
    ap = argparse.ArgumentParser(prog="twinbrain", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("bringup", help="start a profile's nodes as processes (like ros2 launch)")
    p.add_argument(
        "profile", nargs="?", default="robot", help="profile name in config/profiles or a YAML path"
    )
    p.add_argument(
        "--sim", default="", choices=["", "mujoco", "gazebo", "isaac"], help="use profile sim_<sim>"
    )
    p.add_argument("--model", default="", help="checkpoint directory for the policy node")
    p.add_argument("--namespace", default="")
    p.add_argument("--use-sim-time", action="store_true")
    p.add_argument(
        "--embodiment", default="",
        help="embodiment contract (name or YAML path) for every node, replacing the profile's",
    )
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    p.add_argument("--dry-run", action="store_true", help="print the commands instead of running them")
    p.set_defaults(func=_cmd_bringup)

    p = sub.add_parser("doctor", help="check the environment (venv, ROS wheels, messages, torch, EGL)")
    p.set_defaults(func=_cmd_doctor)

    p = sub.add_parser("demo", help="the trained policy on the simulated robot over ROS 2, one-line summary")
    p.add_argument("--model", default="models/so101-sim-touch", help="checkpoint to run")
    p.add_argument("--episodes", type=int, default=25, help="held-out seeds (each runs every task)")
    p.add_argument("--tasks", default="touch_red_cube,touch_blue_cube", help="comma-separated tasks")
    p.add_argument("--threads", type=int, default=1, help="policy CPU threads (0 = one per core)")
    p.add_argument("--out", default="out/demo", help="where the report, plot, camera strip and logs go")
    p.add_argument("--wiring", action="store_true",
                   help="instead: kinematic stand-in robot + scripted wiring policy (no model)")  # fmt: skip
    p.add_argument("--duration", type=float, default=12.0, help="--wiring: seconds to run the graph")
    p.set_defaults(func=_cmd_demo)

    # Data, training and export: their argument modules import only argparse.
    from twinbrain_ros.data.cli import add_convert_arguments, add_record_arguments, convert_main, record_main
    from twinbrain_ros.data.sim_record import add_record_sim_arguments, record_sim_main
    from twinbrain_ros.evaluation import (
        add_eval_sim_arguments,
        add_tune_lead_arguments,
        eval_sim_main,
        tune_lead_main,
    )
    from twinbrain_ros.export.cli import add_export_args, add_verify_args, export_main, verify_main
    from twinbrain_ros.train.cli import add_train_args, train_main
    from twinbrain_ros.train.grounding import add_eval_grounding_arguments, eval_grounding_main

    for name, help_, add, fn in (
        ("record", "record teleoperation episodes to MCAP over ROS 2", add_record_arguments, record_main),
        (
            "record-sim",
            "record seeded scripted-expert demos in MuJoCo",
            add_record_sim_arguments,
            record_sim_main,
        ),
        ("convert", "MCAP episodes -> LeRobot v3 dataset", add_convert_arguments, convert_main),
        ("eval-sim", "closed-loop evaluation in MuJoCo over ROS 2", add_eval_sim_arguments, eval_sim_main),
        (
            "tune-lead",
            "choose a checkpoint's chunk lead on validation scenes (in-process sim)",
            add_tune_lead_arguments,
            tune_lead_main,
        ),
        (
            "eval-grounding",
            "offline: does a policy act on camera + instruction or copy the state?",
            add_eval_grounding_arguments,
            eval_grounding_main,
        ),
        ("train", "train a TwinBrain checkpoint on LeRobot v3 datasets", add_train_args, train_main),
        ("export", "ONNX graphs per deployment profile (+ TensorRT engines)", add_export_args, export_main),
        ("verify", "compare an inference backend with PyTorch", add_verify_args, verify_main),
    ):
        p = sub.add_parser(name, help=help_)
        add(p)
        p.set_defaults(func=fn)

    # Model tooling: twinbrain_ros.model imports torch, so its arguments are only added when one of
    # these subcommands is being run (bringup/record must start on a machine without torch).
    for name, help_ in (
        ("init", "build a TwinBrain checkpoint from a local Hugging Face Qwen-VL directory"),
        ("convert-reference", "convert a checkpoint in the authors' released layout"),
        ("make-tiny", "write a random-init tiny checkpoint (tests, wiring)"),
    ):
        p = sub.add_parser(name, help=help_)
        if name in (argv or sys.argv[1:])[:1]:
            from twinbrain_ros.model import cli as model_cli

            adder, fn = {
                "init": (model_cli.add_init_args, model_cli.init_main),
                "convert-reference": (model_cli.add_convert_reference_args, model_cli.convert_reference_main),
                "make-tiny": (model_cli.add_make_tiny_args, model_cli.make_tiny_main),
            }[name]
            adder(p)
            p.set_defaults(func=fn)

    p = sub.add_parser("bench", help="benchmarks: human table, and with --json a JSON last line")
    p.add_argument("what", choices=["ros", "model", "sim"])
    p.add_argument("--json", action="store_true")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    p.add_argument("--device", default="cpu")
    p.add_argument("--preset", default="")
    p.add_argument(
        "--dtype",
        choices=["auto", "fp32", "bf16"],
        default="auto",
        help="model: weights and activations of both paths (auto: bf16 on CUDA, fp32 on CPU; bf16 on a CPU "
        "pays off where it has AVX512-BF16 or AMX)",
    )
    p.set_defaults(func=_cmd_bench)
    return ap


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``twinbrain`` executable."""
    a = build_parser(argv).parse_args(argv)
    sys.exit(a.func(a) or 0)


if __name__ == "__main__":
    main()
