# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""``twinbrain bench sim``: simulation speed, recorder throughput and converter speed.

- Sim: MuJoCo SO-101 physics steps/s alone and with rendering (224x224 and 640x480, shadows off).
- Recorder: two 640x480 rgb8 cameras at 30 Hz over DDS into MCAP (frames/s written, recorder CPU %).
  Needs the loopback-only namespace (``tools/isolated.sh``; ``make bench`` uses it).
- Converter: MCAP episodes -> LeRobot v3 (frames/s).
"""

from __future__ import annotations

from twinbrain_ros.bench.report import machine, print_json, print_table


def main(a) -> int:
    """Run the three parts; print the table and, with --json, the JSON line."""
    from twinbrain_ros.data.bench import bench_converter, bench_recorder
    from twinbrain_ros.sim.env import SimEnv, benchmark

    seconds = max(1.0, float(a.duration) / 5)
    sim = {}
    with SimEnv("so101_tasks", offscreen=(640, 480)) as env:
        for w, h, hz in ((224, 224, 20.0), (640, 480, 30.0)):
            sim[f"{w}x{h}@{int(hz)}Hz"] = benchmark(env, "front", w, h, seconds=seconds, camera_hz=hz)
    rec = bench_recorder(duration_s=seconds * 2, cameras=2, width=640, height=480, rate_hz=30.0, mode="ros")
    conv = bench_converter(episodes=2, seconds=seconds, cameras=2, width=640, height=480, fps=30)
    rows = []
    first = next(iter(sim.values()))
    rows.append(("sim physics steps/s (no rendering)", f"{first['physics_steps_per_s']:.0f}", ""))
    for k, r in sim.items():
        rows.append((f"sim render ms/frame {k}", f"{r['render_ms']:.1f}", ""))
        rows.append(
            (
                f"sim steps/s with rendering {k}",
                f"{r['steps_per_s_with_render']:.0f}",
                f"real-time factor {r['real_time_factor_with_render']:.2f}",
            )
        )
    rows.append(
        ("recorder frames/s written (2 cams 640x480 @30 Hz)", f"{rec.get('frames_per_s', 0):.1f}", "60")
    )
    rows.append(("recorder CPU %", f"{rec.get('cpu_percent', float('nan')):.1f}", ""))
    rows.append(("converter frames/s (2 cams 640x480)", f"{conv.get('frames_per_s', 0):.1f}", ""))
    print_table("twinbrain bench sim", rows)
    if a.json:
        print_json({"bench": "sim", "machine": machine(), "sim": sim, "recorder": rec, "converter": conv})
    return 0
