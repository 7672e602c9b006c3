# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""``twinbrain record-sim``: record N seeded demonstrations of the scripted expert in MuJoCo over ROS 2.

Starts the ``record_sim`` profile (sim_node, expert_node, recorder_node; sim time), then for each
episode: reset the sim with a seed and a task (``/sim_node/reset_episode``), start the recorder with
the task's instruction (``/recorder_node/start``), wait until the task succeeds (plus a short settle
time) or the time limit passes (``/sim_node/get_task_status``), mark success, and stop the recorder.
Everything travels over real ROS 2 topics and services; run it inside the loopback-only namespace
here (``tools/isolated.sh``), or on a robot computer as is.

Usage:
    twinbrain record-sim --out episodes/ --episodes 10 --tasks touch_red_cube,touch_blue_cube --seed 0
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import yaml


def add_record_sim_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of ``twinbrain record-sim``."""
    p.add_argument("--out", default="episodes", help="output directory of the episode files")
    p.add_argument("--episodes", type=int, default=4, help="number of episodes")
    p.add_argument("--tasks", default="touch_red_cube,touch_blue_cube", help="comma-separated tasks, cycled")
    p.add_argument("--seed", type=int, default=0, help="seed of the first episode (then +1 each)")
    p.add_argument("--max-episode-s", type=float, default=8.0, help="sim seconds before giving up")
    p.add_argument("--settle-s", type=float, default=0.5, help="sim seconds recorded after success")
    p.add_argument("--real-time-factor", type=float, default=1.0, help="sim seconds per wall second")
    p.add_argument(
        "--each-task",
        action="store_true",
        help="record every seed once per task (the same scene with each instruction: language-contrastive "
        "pairs) instead of cycling tasks over consecutive seeds; --episodes still counts episodes",
    )
    p.add_argument(
        "--expert-rate-hz",
        type=float,
        default=None,
        help="the scripted expert's command rate in sim time (default: the node's 30 Hz). It commands on "
        "joint-state ticks (100 Hz), so 30 Hz becomes every 40 ms, which the 20 fps frames alias (a double "
        "step every 4th frame); 20, 50 or 100 Hz divide both rates",
    )
    p.add_argument(
        "--embodiment",
        default=None,
        help="embodiment contract (name or YAML path) for every node, e.g. so101_sim_wrist to record the "
        "wrist camera too (default: the record_sim profile's so101_sim)",
    )
    p.add_argument(
        "--expert-miss-prob",
        type=float,
        default=None,
        help="probability that a lift episode's first grasp is aimed 2-3 cm off the object on purpose, so "
        "the demo shows the empty lift and the re-grasp (recovery data; default 0). Give a --max-episode-s "
        "that leaves time for the second attempt (~9 s)",
    )
    p.add_argument("--json", action="store_true", help="print a JSON summary as the last line")


def episode_plan(
    episodes: int, tasks: list[str], seed: int, each_task: bool = False
) -> list[tuple[int, str]]:
    """(seed, task) of each episode: tasks cycled over consecutive seeds, or each seed once per task."""
    n = len(tasks)
    if each_task:
        return [(seed + i // n, tasks[i % n]) for i in range(episodes)]
    return [(seed + i, tasks[i % n]) for i in range(episodes)]


def _wait_for_command(node, received: list, timeout: float) -> None:
    """Spin until the expert's command stream has delivered a message (cleared by the caller)."""
    import rclpy

    end = time.monotonic() + timeout
    while not received and time.monotonic() < end:
        rclpy.spin_once(node, timeout_sec=0.02)
    if not received:
        raise RuntimeError(f"the expert sent no command within {timeout} s of the reset")


def _wait_for_recorder(node, latest: dict, timeout: float) -> None:
    """Spin until the recorder's ``~/status`` says it hears every topic it records.

    Right after start-up, DDS discovery can match the recorder to the expert's command topic a second
    after the driver itself hears the commands: an episode started then misses its first actions
    (the converter rejects it). ``latest`` holds the newest status JSON (filled by a subscription).
    """
    import rclpy

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if latest.get("waiting_for") == []:
            return
        rclpy.spin_once(node, timeout_sec=0.02)
    raise RuntimeError(
        f"the recorder did not hear {latest.get('waiting_for', 'anything (no status)')} within {timeout} s"
    )


def _call(node, client, request, timeout: float = 15.0):
    import rclpy

    if not client.wait_for_service(timeout_sec=timeout):
        raise RuntimeError(f"service {client.srv_name} not available after {timeout} s")
    fut = client.call_async(request)
    rclpy.spin_until_future_complete(node, fut, timeout_sec=timeout)
    if not fut.done() or fut.result() is None:
        raise RuntimeError(f"service {client.srv_name} did not answer in {timeout} s")
    return fut.result()


def record_sim(
    out: str,
    episodes: int,
    tasks: list[str],
    seed: int = 0,
    max_episode_s: float = 8.0,
    settle_s: float = 0.5,
    real_time_factor: float = 1.0,
    log_dir: Path | None = None,
    each_task: bool = False,
    expert_rate_hz: float | None = None,
    embodiment: str | None = None,
    expert_miss_prob: float | None = None,
) -> list[dict]:
    """Record ``episodes`` episodes; returns one summary dict per episode.

    Episode ``i`` uses seed ``seed + i`` and task ``tasks[i % len(tasks)]``, or with ``each_task`` seed
    ``seed + i // len(tasks)`` so that every scene is recorded once with each task's instruction.
    ``expert_rate_hz`` sets the expert's command rate (and the recorder's expected action rate).
    ``embodiment`` replaces the profile's contract in every node (the recorder records its cameras).
    ``expert_miss_prob`` makes that share of lift episodes start with a deliberate missed grasp
    (:class:`~twinbrain_ros.sim.expert.ExpertConfig`).
    """
    import rclpy
    from std_msgs.msg import String
    from std_srvs.srv import SetBool, Trigger

    from twinbrain_ros.bringup import load_profile, plan, run_background, stop_all
    from twinbrain_ros.core.embodiment import load_embodiment
    from twinbrain_ros.ros.joint_commands import subscribe_joint_commands
    from twinbrain_ros.srv import GetTaskStatus, ResetEpisode, StartEpisode

    base = load_profile("record_sim")
    data = {k: {"ros__parameters": dict(v)} for k, v in base.nodes.items()}
    data["recorder_node"]["ros__parameters"]["output_dir"] = str(Path(out).resolve())
    data["sim_node"]["ros__parameters"]["real_time_factor"] = float(real_time_factor)
    if embodiment is not None:
        load_embodiment(embodiment)  # fail here, naming the field, rather than in three nodes' logs
    if expert_rate_hz is not None:
        data["expert_node"]["ros__parameters"]["rate_hz"] = float(expert_rate_hz)
        data["recorder_node"]["ros__parameters"]["action_rate_hz"] = float(expert_rate_hz)
    if expert_miss_prob is not None:
        if not 0.0 <= expert_miss_prob <= 1.0:
            raise ValueError(f"expert_miss_prob: {expert_miss_prob} is not in [0, 1]")
        data["expert_node"]["ros__parameters"]["miss_prob"] = float(expert_miss_prob)
    tmp = Path(tempfile.mkdtemp(prefix="twinbrain_record_sim_"))
    (tmp / "record_sim.yaml").write_text(yaml.safe_dump(data))
    procs = run_background(
        plan(load_profile(str(tmp / "record_sim.yaml")), use_sim_time=True, embodiment=embodiment or ""),
        log_dir=log_dir or tmp / "logs",
    )
    rclpy.init()
    node = rclpy.create_node("record_sim_driver")
    reset = node.create_client(ResetEpisode, "/sim_node/reset_episode")
    status = node.create_client(GetTaskStatus, "/sim_node/get_task_status")
    start = node.create_client(StartEpisode, "/recorder_node/start")
    stop = node.create_client(Trigger, "/recorder_node/stop")
    mark = node.create_client(SetBool, "/recorder_node/mark_success")
    # The recorder starts only once the expert's commands flow and the recorder reports hearing every
    # topic it records: right after start-up, discovery can leave the first episode's action stream a
    # second late (the driver hears the commands before the recorder does), which the converter rejects.
    expert = data["expert_node"]["ros__parameters"]
    commands: list = []
    subscribe_joint_commands(
        node,
        expert.get("command_interface", "joint_trajectory"),
        "/" + str(expert.get("command_topic", "teleop/joint_command")).lstrip("/"),
        load_embodiment(expert["embodiment"]).joint_names,
        on_command=lambda _q: commands.append(True),
        on_reject=lambda _why: commands.append(True),  # flowing, if malformed: the recorder reports it
    )
    recorder_status: dict = {}
    node.create_subscription(
        String, "/recorder_node/status", lambda m: recorder_status.update(json.loads(m.data)), 10
    )

    def begin(ep_seed: int, task: str):
        r = _call(node, reset, ResetEpisode.Request(seed=ep_seed, task=task))
        if not r.success:
            raise RuntimeError(f"reset failed: {r.message}")
        commands.clear()
        _wait_for_command(node, commands, timeout=15.0)
        _wait_for_recorder(node, recorder_status, timeout=15.0)
        return r

    results = []
    order = episode_plan(episodes, tasks, seed, each_task)
    try:
        # The sim runs an episode from its reset on. Right after start-up, discovery (the expert
        # hearing the sim, the recorder hearing every topic) can take seconds on a loaded machine, by
        # which time a fast episode is over and would be recorded from its end. So the graph is first
        # brought up on the first scene; its seeded reset below then replays that scene from the start.
        if order:
            begin(*order[0])
        for i, (ep_seed, task) in enumerate(order):
            r = begin(ep_seed, task)
            s = _call(node, start, StartEpisode.Request(instruction=r.instruction, task=task))
            if not s.success:
                raise RuntimeError(f"recorder did not start: {s.message}")
            st = None
            wall_end = time.monotonic() + max_episode_s / max(real_time_factor, 0.05) + 30.0
            while time.monotonic() < wall_end:
                st = _call(node, status, GetTaskStatus.Request())
                done = st.first_success_time >= 0 and st.episode_time >= st.first_success_time + settle_s
                if done or st.episode_time >= max_episode_s:
                    break
                time.sleep(0.05)
            ok = bool(st is not None and st.first_success_time >= 0)
            if ok:
                _call(node, mark, SetBool.Request(data=True))
            t = _call(node, stop, Trigger.Request())
            results.append(
                {
                    "episode": i,
                    "task": task,
                    "seed": ep_seed,
                    "success": ok,
                    "time_to_success_s": float(st.first_success_time) if ok else None,
                    "file": s.path.replace(".partial.mcap", ".mcap"),
                    "stopped": bool(t.success),
                }
            )
            print(f"[record-sim] episode {i}: {task} seed {ep_seed} success={ok}", file=sys.stderr)
    finally:
        node.destroy_node()
        rclpy.shutdown()
        stop_all(procs)
    return results


def record_sim_main(a: argparse.Namespace) -> int:
    """Entry point of ``twinbrain record-sim``; 0 when every episode was recorded."""
    tasks = [t for t in a.tasks.split(",") if t]
    res = record_sim(
        a.out, a.episodes, tasks, a.seed, a.max_episode_s, a.settle_s, a.real_time_factor,
        each_task=a.each_task, expert_rate_hz=a.expert_rate_hz, embodiment=a.embodiment,
        expert_miss_prob=a.expert_miss_prob,
    )
    n_ok = sum(r["success"] for r in res)
    print(f"record-sim: episodes={len(res)} success={n_ok}/{len(res)} out={a.out}")
    if a.json:
        print(json.dumps({"episodes": res}))
    return 0 if len(res) == a.episodes else 1
