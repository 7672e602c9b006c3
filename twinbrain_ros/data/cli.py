# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""``twinbrain record`` and ``twinbrain convert``.

``record`` runs the recorder node in this process. Modes:

* services (default): episodes are started/stopped through ``~/start``, ``~/stop``, ``~/discard``,
  ``~/mark_success``; with ``--keys`` (and a terminal), single-line commands on stdin drive them:
  Enter = start/stop, ``s`` = success + stop, ``f`` = failure + stop, ``d`` = discard, ``q`` = quit;
* automatic: ``--episodes N --duration S`` records N episodes of S seconds each;
* ``--list DIR`` prints the episodes of a directory; ``--recover DIR`` rebuilds partial episodes.

``convert`` turns MCAP episodes into a LeRobot v3 dataset and prints the sync report.

Usage:
    twinbrain record --out episodes --instruction "pick up the cube" --keys
    twinbrain record --out episodes --instruction "pick up the cube" --episodes 5 --duration 20
    twinbrain record --list episodes
    twinbrain convert episodes --out datasets/pick_cube --fps 30
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def add_record_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``twinbrain record``."""
    p.add_argument("--out", default="episodes", help="output directory of the episode files")
    p.add_argument("--embodiment", default="so101", help="embodiment contract name or YAML path")
    p.add_argument("--params-file", default="", help="recorder parameters YAML (e.g. config/recorder.yaml)")
    p.add_argument("--action-topic", default="", help="teleop command topic (default: the parameters')")
    p.add_argument("--action-type", default="", help="its message type, e.g. sensor_msgs/msg/JointState")
    p.add_argument("--joint-states-topic", default="", help="robot joint-state topic")
    p.add_argument("--instruction", default="", help="instruction of the episodes (keys/automatic modes)")
    p.add_argument("--task", default="", help="optional short task id")
    p.add_argument("--episodes", type=int, default=0, help="automatic mode: number of episodes")
    p.add_argument("--duration", type=float, default=0.0, help="automatic mode: seconds per episode")
    p.add_argument("--reset-time", type=float, default=2.0, help="automatic mode: pause between episodes, s")
    p.add_argument("--success", action="store_true", help="automatic mode: mark the episodes successful")
    p.add_argument("--keys", action="store_true", help="drive the recorder with line commands on stdin")
    p.add_argument("--node-name", default="recorder_node", help="ROS node name")
    p.add_argument("--list", metavar="DIR", default="", help="list the episodes in DIR and exit")
    p.add_argument(
        "--recover", metavar="DIR", default="", help="recover the partial episodes in DIR and exit"
    )
    p.add_argument("--json", action="store_true", help="--list: print JSON")


def add_convert_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``twinbrain convert``."""
    p.add_argument("inputs", nargs="+", help="episode directories or episode_XXXXXX.mcap files")
    p.add_argument("--out", required=True, help="dataset directory to create")
    p.add_argument("--fps", type=int, default=0, help="dataset fps (default: the contract's camera rate)")
    p.add_argument(
        "--embodiment", default="", help="contract every episode must match (default: the first's)"
    )
    p.add_argument("--include-partial", action="store_true", help="also convert partial/recovered episodes")
    p.add_argument("--only-success", action="store_true", help="only episodes marked successful")
    p.add_argument(
        "--scene-group",
        type=int,
        default=0,
        help="episodes come in consecutive groups of G, one scene per instruction (record-sim --each-task): "
        "keep or drop each group whole, so that train --scene-group G finds every pair (0 = off)",
    )
    p.add_argument("--skip-bad", action="store_true", help="skip bad episodes (reported) instead of failing")
    p.add_argument("--tolerance", type=float, default=0.0, help="future tolerance of the as-of selection, s")
    p.add_argument(
        "--phase", type=float, default=None, help="grid delay after camera frames, s (default: auto)"
    )
    p.add_argument("--max-age", type=float, default=None, help="max sample age before it counts as stale, s")
    p.add_argument("--max-stale-fraction", type=float, default=0.1, help="reject episodes staler than this")
    p.add_argument("--time-source", choices=("header", "log"), default="header", help="stamps to align on")
    p.add_argument("--state-topic", default="", help="override the recorded joint-state topic")
    p.add_argument("--action-topic", default="", help="override the recorded action topic")
    p.add_argument("--task-field", choices=("instruction", "task"), default="instruction")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
    p.add_argument("--json", action="store_true", help="print the report as JSON (last line)")


def convert_main(args: argparse.Namespace) -> int:
    """Run ``twinbrain convert``; returns the exit code (0 ok, 2 bad input)."""
    from twinbrain_ros.data.convert import ConvertError, ConvertOptions, convert_episodes

    opts = ConvertOptions(
        fps=args.fps or None,
        embodiment=args.embodiment or None,
        include_partial=args.include_partial,
        only_success=args.only_success,
        skip_bad=args.skip_bad,
        scene_group=args.scene_group,
        tolerance_s=args.tolerance,
        phase_s=args.phase,
        max_age_s=args.max_age,
        max_stale_fraction=args.max_stale_fraction,
        time_source=args.time_source,
        state_topic=args.state_topic or None,
        action_topic=args.action_topic or None,
        task_field=args.task_field,
        overwrite=args.overwrite,
    )
    try:
        report = convert_episodes(args.inputs, args.out, opts)
    except ConvertError as e:
        print(f"twinbrain convert: failed, no dataset written to '{args.out}':", file=sys.stderr)
        for p in e.problems:
            print(f"  - {p}", file=sys.stderr)
        return 2
    print(report.format_text())
    if args.json:
        print(json.dumps(report.to_dict()))
    return 0


def _list_episodes(directory: str, as_json: bool) -> int:
    from twinbrain_ros.data import mcap_episode as me

    rows = []
    for index, _status, path in me.scan_episodes(directory):
        try:
            info = me.read_episode_info(path)
            rows.append(
                {
                    "index": index,
                    "status": info.status,
                    "file": path.name,
                    "instruction": info.instruction,
                    "success": info.success,
                    "messages": sum(info.message_counts.values()),
                    "gaps": info.gap_count(),
                    "end_reason": info.end_reason,
                }
            )
        except me.EpisodeError as e:
            rows.append({"index": index, "status": "unreadable", "file": path.name, "error": str(e)})
    if as_json:
        print(json.dumps(rows))
    else:
        for r in rows:
            if "error" in r:
                print(f"{r['index']:6d}  unreadable  {r['file']}: {r['error']}")
            else:
                print(
                    f"{r['index']:6d}  {r['status']:9s}  success={str(r['success']):7s} gaps={r['gaps']:<3d} "
                    f"msgs={r['messages']:<7d} {r['file']}  {r['instruction']!r}"
                )
    return 0


def _recover(directory: str) -> int:
    from twinbrain_ros.data import mcap_episode as me

    code = 0
    partials = [p for _, s, p in me.scan_episodes(directory) if s == "partial"]
    if not partials:
        print(f"no partial episode in '{directory}'")
    for p in partials:
        try:
            out = me.recover_partial(p)
            info = me.read_episode_info(out)
            print(
                f"recovered {p.name} -> {out.name} "
                f"({sum(info.message_counts.values())} messages, marked partial)"
            )
        except me.EpisodeError as e:
            print(f"cannot recover {p.name}: {e}", file=sys.stderr)
            code = 2
    return code


def _ros_args(a: argparse.Namespace) -> list[str]:
    args = ["--ros-args", "-r", f"__node:={a.node_name}"]
    if a.params_file:
        args += ["--params-file", a.params_file]
    overrides = {
        "embodiment": a.embodiment,
        "output_dir": str(Path(a.out).resolve()),
        "action_topic": a.action_topic,
        "action_type": a.action_type,
        "joint_states_topic": a.joint_states_topic,
    }
    for k, v in overrides.items():
        if v:
            args += ["-p", f"{k}:={v}"]
    return args


def record_main(args: argparse.Namespace) -> int:
    """Run ``twinbrain record``; returns the exit code."""
    if args.list:
        return _list_episodes(args.list, args.json)
    if args.recover:
        return _recover(args.recover)
    if (args.episodes or args.duration or args.keys) and not args.instruction.strip():
        print(
            "twinbrain record: --instruction is required with --keys or --episodes/--duration",
            file=sys.stderr,
        )
        return 2
    if bool(args.episodes) != bool(args.duration):
        print("twinbrain record: automatic mode needs both --episodes and --duration", file=sys.stderr)
        return 2

    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    from twinbrain_ros.core.validation import ParameterError, ValidationError
    from twinbrain_ros.data import mcap_episode as me
    from twinbrain_ros.nodes.recorder_node import RecorderNode
    from twinbrain_ros.ros.spinning import SpinThread

    rclpy.init(args=_ros_args(args))
    node = None
    ex = None
    spinner = None
    try:
        try:
            node = RecorderNode()
        except (ParameterError, ValidationError, me.EpisodeError, FileNotFoundError) as e:
            print(f"twinbrain record: {e}", file=sys.stderr)
            return 2
        ex = SingleThreadedExecutor()
        ex.add_node(node)
        if not (args.episodes or args.keys):
            print(
                f"[record] recorder running; services under {node.get_fully_qualified_name()}/"
                "{start,stop,discard,mark_success}; Ctrl-C to quit",
                file=sys.stderr,
            )
            ex.spin()
            return 0
        spinner = SpinThread(ex)
        if args.episodes:
            return _auto(node, args)
        return _keys(node, args)
    except KeyboardInterrupt:
        return 0
    finally:
        if node is not None:
            node.shutdown()  # saves an episode still being recorded
        if spinner is not None:
            spinner.stop(timeout_s=5.0)  # wakes and joins the spin thread, then shuts ex down
        elif ex is not None:
            ex.shutdown(timeout_sec=5.0)
        if node is not None:
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()


def _wait_for_publishers(node, timeout_s: float = 15.0) -> None:
    topics = node.recorded_topics()
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        missing = [t for t in topics if node.count_publishers(t) == 0]
        if not missing:
            return
        time.sleep(0.1)
    print(
        f"[record] warning: no publisher on {missing} after {timeout_s:.0f} s; recording anyway",
        file=sys.stderr,
    )


def _auto(node, a: argparse.Namespace) -> int:
    code = 0
    _wait_for_publishers(node)
    for i in range(a.episodes):
        ok, msg, _, _ = node.start_episode(a.instruction, a.task)
        print(f"[record] {msg}", file=sys.stderr)
        if not ok:
            return 2
        time.sleep(a.duration)
        if a.success:
            node.mark_success(True)
        ok, msg = node.stop_episode()
        print(f"[record] {msg}", file=sys.stderr)
        code = code or (0 if ok else 2)
        if i + 1 < a.episodes:
            time.sleep(a.reset_time)
    return code


def _keys(node, a: argparse.Namespace) -> int:
    print(
        "[record] Enter = start/stop, s = success+stop, f = failure+stop, d = discard, q = quit",
        file=sys.stderr,
    )
    for line in sys.stdin:
        cmd = line.strip().lower()
        recording = node.status()["state"] == "recording"
        if cmd == "q":
            break
        if cmd == "" and not recording:
            print(f"[record] {node.start_episode(a.instruction, a.task)[1]}", file=sys.stderr)
        elif cmd in ("", "s", "f") and recording:
            if cmd in ("s", "f"):
                node.mark_success(cmd == "s")
            print(f"[record] {node.stop_episode()[1]}", file=sys.stderr)
        elif cmd == "d":
            print(f"[record] {node.discard_episode()[1]}", file=sys.stderr)
        else:
            print(f"[record] ignored {cmd!r} ({'recording' if recording else 'idle'})", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (``python -m twinbrain_ros.data.cli record|convert ...``)."""
    ap = argparse.ArgumentParser(prog="twinbrain-data", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    add_record_arguments(sub.add_parser("record", help="record teleoperation episodes to MCAP"))
    add_convert_arguments(sub.add_parser("convert", help="MCAP episodes -> LeRobot v3 dataset"))
    a = ap.parse_args(argv)
    return record_main(a) if a.cmd == "record" else convert_main(a)


if __name__ == "__main__":
    sys.exit(main())
