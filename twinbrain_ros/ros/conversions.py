# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""Message <-> core conversions, with boundary validation that names every problem.

Each ``*_from_msg`` returns a core value or raises :class:`ValidationError` listing all the
reasons the message was rejected; nodes log the reason, count it, and keep their last good state.

ActionChunk <-> trajectory_msgs/JointTrajectory is lossless: the trajectory carries names, per-step
times, positions and velocities natively; the chunk's metadata (chunk id, observation stamp, model
id, frozen steps, inference time) travels in ``header.frame_id`` as ``twinbrain_ros/ActionChunk?k=v&...``,
which joint_trajectory_controller ignores.

Usage:
    msg = chunk_to_msg(chunk)                  # core ActionChunk -> twinbrain_ros/msg/ActionChunk
    chunk = chunk_from_msg(msg)                # validated; raises ValidationError
    traj = chunk_msg_to_trajectory(msg); msg2 = trajectory_to_chunk_msg(traj)   # msg2 == msg
"""

from __future__ import annotations

import math
from urllib.parse import parse_qsl, quote, urlencode

import numpy as np

from twinbrain_ros.core.types import ActionChunk
from twinbrain_ros.core.validation import ValidationError

_NS = 1_000_000_000
FRAME_PREFIX = "twinbrain_ros/ActionChunk?"


# --- time --------------------------------------------------------------------------------------------


def time_to_sec(t) -> float:
    """builtin_interfaces/Time -> float seconds."""
    return t.sec + t.nanosec * 1e-9


def time_to_ns(t) -> int:
    """builtin_interfaces/Time -> integer nanoseconds."""
    return int(t.sec) * _NS + int(t.nanosec)


def ns_to_time(ns: int):
    """Integer nanoseconds -> builtin_interfaces/Time."""
    from builtin_interfaces.msg import Time

    sec, nsec = divmod(int(ns), _NS)
    return Time(sec=int(sec), nanosec=int(nsec))


def sec_to_time(s: float):
    """Float seconds -> builtin_interfaces/Time (rounded to the nanosecond)."""
    return ns_to_time(round(s * _NS))


def duration_to_ns(d) -> int:
    """builtin_interfaces/Duration -> integer nanoseconds."""
    return int(d.sec) * _NS + int(d.nanosec)


def ns_to_duration(ns: int):
    """Integer nanoseconds -> builtin_interfaces/Duration."""
    from builtin_interfaces.msg import Duration

    sec, nsec = divmod(int(ns), _NS)
    return Duration(sec=int(sec), nanosec=int(nsec))


# --- ActionChunk ------------------------------------------------------------------------------------


def chunk_to_msg(chunk: ActionChunk, frame_id: str = ""):
    """Core ActionChunk -> twinbrain_ros/msg/ActionChunk."""
    from twinbrain_ros.msg import ActionChunk as ActionChunkMsg

    msg = ActionChunkMsg()
    msg.header.stamp = sec_to_time(chunk.obs_stamp)
    msg.header.frame_id = frame_id
    msg.chunk_id = int(chunk.chunk_id)
    msg.model_id = chunk.model_id
    msg.joint_names = list(chunk.joint_names)
    msg.t0 = sec_to_time(chunk.t0)
    msg.step_dt = float(chunk.step_dt)
    msg.horizon = int(chunk.horizon)
    msg.positions = np.ascontiguousarray(chunk.positions, dtype=np.float32).ravel()
    if chunk.velocities is not None:
        msg.velocities = np.ascontiguousarray(chunk.velocities, dtype=np.float32).ravel()
    msg.frozen_steps = int(chunk.frozen_steps)
    msg.inference_ms = float(chunk.inference_ms)
    return msg


def check_chunk_msg(msg, expected_joints: tuple[str, ...] | None = None, now: float | None = None,
                    max_future_s: float = 1.0, max_age_s: float = 2.0) -> list[str]:
    """Every reason ``msg`` (an ActionChunk message) is unusable; empty if valid.

    Args:
        msg: twinbrain_ros/msg/ActionChunk.
        expected_joints: the contract's joint names; the chunk must name the same set.
        now: current time in seconds, to reject stamps far in the future or past.
        max_future_s: largest allowed t0 - now.
        max_age_s: largest allowed now - (time of the chunk's last step).
    """
    problems = []
    names = list(msg.joint_names)
    j, h = len(names), int(msg.horizon)
    if j == 0:
        problems.append("joint_names is empty")
    if len(set(names)) != j:
        problems.append(f"joint_names has duplicates: {names}")
    if expected_joints is not None and set(names) != set(expected_joints):
        unknown = sorted(set(names) - set(expected_joints))
        missing = sorted(set(expected_joints) - set(names))
        problems.append(f"joint_names mismatch: unknown {unknown}, missing {missing}")
    if h < 1:
        problems.append(f"horizon must be >= 1, got {h}")
    if not (math.isfinite(msg.step_dt) and msg.step_dt > 0):
        problems.append(f"step_dt must be > 0 and finite, got {msg.step_dt}")
    n_pos = len(msg.positions)
    if n_pos != h * j:
        problems.append(f"positions has {n_pos} values, expected horizon*joints = {h}*{j} = {h * j}")
    elif n_pos and not np.all(np.isfinite(np.asarray(msg.positions, dtype=np.float64))):
        problems.append("positions contain NaN or inf")
    n_vel = len(msg.velocities)
    if n_vel not in (0, h * j):
        problems.append(f"velocities has {n_vel} values, expected 0 or {h * j}")
    elif n_vel and not np.all(np.isfinite(np.asarray(msg.velocities, dtype=np.float64))):
        problems.append("velocities contain NaN or inf")
    if msg.frozen_steps > max(h, 0):
        problems.append(f"frozen_steps {msg.frozen_steps} exceeds horizon {h}")
    if now is not None and not problems:
        t0 = time_to_sec(msg.t0)
        t_end = t0 + (h - 1) * msg.step_dt
        if t0 - now > max_future_s:
            problems.append(f"t0 is {t0 - now:.3f} s in the future (limit {max_future_s} s)")
        if now - t_end > max_age_s:
            problems.append(f"chunk ended {now - t_end:.3f} s ago (limit {max_age_s} s)")
    return problems


def chunk_from_msg(msg, expected_joints: tuple[str, ...] | None = None, now: float | None = None,
                   max_future_s: float = 1.0, max_age_s: float = 2.0) -> ActionChunk:
    """Validate an ActionChunk message and convert it, reordering columns to ``expected_joints``.

    Raises:
        ValidationError: listing every problem found.
    """
    problems = check_chunk_msg(msg, expected_joints, now, max_future_s, max_age_s)
    if problems:
        raise ValidationError(problems)
    names = tuple(msg.joint_names)
    h, j = int(msg.horizon), len(names)
    pos = np.asarray(msg.positions, dtype=np.float64).reshape(h, j)
    vel = np.asarray(msg.velocities, dtype=np.float64).reshape(h, j) if len(msg.velocities) else None
    if expected_joints is not None and names != tuple(expected_joints):
        order = [names.index(n) for n in expected_joints]
        pos = pos[:, order]
        vel = vel[:, order] if vel is not None else None
        names = tuple(expected_joints)
    return ActionChunk(joint_names=names, positions=pos, step_dt=float(msg.step_dt), t0=time_to_sec(msg.t0),
                       obs_stamp=time_to_sec(msg.header.stamp), chunk_id=int(msg.chunk_id), velocities=vel,
                       frozen_steps=int(msg.frozen_steps), inference_ms=float(msg.inference_ms),
                       model_id=msg.model_id)


def chunk_msg_to_trajectory(msg):
    """twinbrain_ros/msg/ActionChunk -> trajectory_msgs/JointTrajectory (lossless, see module doc).

    The trajectory's header stamp is the chunk's t0 (JTC starts the trajectory at header.stamp) and
    point k has time_from_start = k * step_dt, rounded to the nanosecond.
    """
    from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

    traj = JointTrajectory()
    traj.header.stamp = msg.t0
    meta = {"id": msg.chunk_id, "obs": time_to_ns(msg.header.stamp), "model": msg.model_id,
            "frozen": msg.frozen_steps, "ms": repr(float(msg.inference_ms)), "dt": repr(float(msg.step_dt)),
            "frame": msg.header.frame_id}
    traj.header.frame_id = FRAME_PREFIX + urlencode(meta, quote_via=quote)
    traj.joint_names = list(msg.joint_names)
    j, h = len(msg.joint_names), int(msg.horizon)
    pos = np.asarray(msg.positions, dtype=np.float64).reshape(h, j)
    vel = np.asarray(msg.velocities, dtype=np.float64).reshape(h, j) if len(msg.velocities) else None
    for k in range(h):
        p = JointTrajectoryPoint()
        p.positions = pos[k].tolist()
        if vel is not None:
            p.velocities = vel[k].tolist()
        p.time_from_start = ns_to_duration(round(k * msg.step_dt * _NS))
        traj.points.append(p)
    return traj


def trajectory_to_chunk_msg(traj, default_model_id: str = "joint_trajectory"):
    """trajectory_msgs/JointTrajectory -> twinbrain_ros/msg/ActionChunk.

    Exact inverse of :func:`chunk_msg_to_trajectory`. A trajectory from another producer (no metadata)
    must have uniformly spaced points; its step_dt is the spacing and its observation stamp the header
    stamp.

    Raises:
        ValidationError: if the trajectory cannot be represented as a chunk.
    """
    from twinbrain_ros.msg import ActionChunk as ActionChunkMsg

    problems = []
    j = len(traj.joint_names)
    h = len(traj.points)
    if h == 0:
        problems.append("trajectory has no points")
    meta = {}
    if traj.header.frame_id.startswith(FRAME_PREFIX):
        meta = dict(parse_qsl(traj.header.frame_id[len(FRAME_PREFIX):], keep_blank_values=True))
    times = [duration_to_ns(p.time_from_start) for p in traj.points]
    if "dt" in meta:
        step_dt = float(meta["dt"])
    elif h >= 2:
        step_dt = (times[1] - times[0]) / _NS
    else:
        step_dt = 0.0
    if h and times[0] != 0 and not meta:
        problems.append(f"first point must have time_from_start 0, got {times[0] / _NS} s")
    if h >= 2 and not meta:
        gaps = np.diff(times)
        if np.any(np.abs(gaps - gaps[0]) > 1000):
            problems.append("points are not uniformly spaced in time")
    for k, p in enumerate(traj.points):
        if len(p.positions) != j:
            problems.append(f"point {k} has {len(p.positions)} positions for {j} joints")
            break
        if len(p.velocities) not in (0, j):
            problems.append(f"point {k} has {len(p.velocities)} velocities for {j} joints")
            break
    if problems:
        raise ValidationError(problems)
    msg = ActionChunkMsg()
    msg.t0 = traj.header.stamp
    msg.header.stamp = ns_to_time(int(meta["obs"])) if "obs" in meta else traj.header.stamp
    msg.header.frame_id = meta.get("frame", "")
    msg.chunk_id = int(meta.get("id", 0))
    msg.model_id = meta.get("model", default_model_id)
    msg.frozen_steps = int(meta.get("frozen", 0))
    msg.inference_ms = float(meta.get("ms", 0.0))
    msg.joint_names = list(traj.joint_names)
    msg.step_dt = step_dt
    msg.horizon = h
    msg.positions = np.asarray([p.positions for p in traj.points], dtype=np.float32).ravel()
    if h and all(len(p.velocities) == j for p in traj.points) and j:
        msg.velocities = np.asarray([p.velocities for p in traj.points], dtype=np.float32).ravel()
    return msg


# --- JointState ------------------------------------------------------------------------------------


def joint_state_from_msg(msg, joint_names: tuple[str, ...],
                         last_stamp: float | None = None) -> tuple[float, np.ndarray, np.ndarray | None]:
    """sensor_msgs/JointState -> (stamp, positions, velocities or None) in ``joint_names`` order.

    The message may list its joints in any order and may carry extra joints; every contract joint
    must be present.

    Args:
        msg: sensor_msgs/JointState.
        joint_names: the contract's joint order.
        last_stamp: stamp of the previously accepted message; a stamp older than it is rejected.

    Raises:
        ValidationError: listing every problem (missing/duplicate names, length mismatch, NaN/inf,
            time going backwards).
    """
    problems = []
    names = list(msg.name)
    pos = np.asarray(msg.position, dtype=np.float64)
    vel = np.asarray(msg.velocity, dtype=np.float64)
    stamp = time_to_sec(msg.header.stamp)
    if len(set(names)) != len(names):
        problems.append(f"duplicate joint names: {names}")
    if len(pos) != len(names):
        problems.append(f"{len(names)} names but {len(pos)} positions")
    if len(vel) not in (0, len(names)):
        problems.append(f"{len(names)} names but {len(vel)} velocities")
    missing = [n for n in joint_names if n not in names]
    if missing:
        problems.append(f"missing joints {missing} (got {names})")
    if last_stamp is not None and stamp < last_stamp:
        problems.append(
            f"stamp {stamp:.6f} is older than the previous one {last_stamp:.6f} (time went backwards)"
        )
    if not problems:
        idx = [names.index(n) for n in joint_names]
        pos = pos[idx]
        bad = [joint_names[i] for i in np.flatnonzero(~np.isfinite(pos))]
        if bad:
            problems.append(f"non-finite positions for {bad}")
        vel = vel[idx] if len(vel) else None
        if vel is not None and not np.all(np.isfinite(vel)):
            problems.append("non-finite velocities")
    if problems:
        raise ValidationError(problems)
    return stamp, pos, vel


def joint_state_to_msg(stamp: float, joint_names: tuple[str, ...], positions: np.ndarray,
                       velocities: np.ndarray | None = None):
    """(stamp, positions[, velocities]) -> sensor_msgs/JointState."""
    from sensor_msgs.msg import JointState

    msg = JointState()
    msg.header.stamp = sec_to_time(stamp)
    msg.name = list(joint_names)
    msg.position = [float(x) for x in positions]
    if velocities is not None:
        msg.velocity = [float(x) for x in velocities]
    return msg


# --- Images and instructions ---------------------------------------------------------------------
#
# Images arrive as sensor_msgs/Image (raw) or sensor_msgs/CompressedImage (jpeg/png, the
# image_transport "compressed" convention) and leave as (H, W, 3) uint8 RGB arrays, the layout every
# policy consumes. Raw frames are viewed in place with np.frombuffer (no copy for rgb8 without row
# padding), so a 640x480 frame costs microseconds, not milliseconds.

# Channels per supported raw encoding (the contract's IMAGE_ENCODINGS).
IMAGE_CHANNELS = {"rgb8": 3, "bgr8": 3, "mono8": 1}
COMPRESSED_FORMATS = ("jpeg", "png")


def _camera_label(expected) -> str:
    return f" for camera '{expected.name}'" if expected is not None else ""


def check_image_msg(msg, expected=None) -> list[str]:
    """Every reason a sensor_msgs/Image cannot be used; empty if valid.

    Args:
        msg: sensor_msgs/Image.
        expected: the contract's :class:`~twinbrain_ros.core.embodiment.CameraSpec` for this stream;
            when given, the encoding and size must match it.
    """
    problems = []
    enc = str(msg.encoding)
    w, h, step = int(msg.width), int(msg.height), int(msg.step)
    ch = IMAGE_CHANNELS.get(enc)
    if ch is None:
        problems.append(f"unsupported encoding '{enc}' (supported: {list(IMAGE_CHANNELS)})")
    elif expected is not None and enc != expected.encoding:
        problems.append(f"encoding '{enc}' differs from the contract's '{expected.encoding}'"
                        f"{_camera_label(expected)}")
    if w <= 0 or h <= 0:
        problems.append(f"image size {w}x{h} is empty")
    elif expected is not None and (w, h) != (expected.width, expected.height):
        problems.append(f"image is {w}x{h} but the contract expects {expected.width}x{expected.height}"
                        f"{_camera_label(expected)}")
    if ch is not None and w > 0 and step < w * ch:
        problems.append(f"step {step} is smaller than width*channels = {w}*{ch} = {w * ch}")
    n = len(msg.data)
    if step > 0 and h > 0:
        if n < step * h:
            problems.append(f"data is truncated: {n} bytes, expected step*height = {step}*{h} = {step * h}")
        elif n > step * h:
            problems.append(f"data has {n} bytes, more than step*height = {step}*{h} = {step * h}")
    return problems


def image_from_msg(msg, expected=None) -> np.ndarray:
    """sensor_msgs/Image (rgb8, bgr8, mono8) -> (H, W, 3) uint8 RGB array.

    Row padding (``step`` > width * channels) is dropped. For rgb8 the result is a read-only view of
    the message's buffer (no copy); bgr8 and mono8 are converted into a new array.

    Args:
        msg: sensor_msgs/Image.
        expected: the contract's CameraSpec; when given, encoding and size must match it.

    Raises:
        ValidationError: listing every problem (encoding, size vs contract, step, truncated data).
    """
    problems = check_image_msg(msg, expected)
    if problems:
        raise ValidationError(problems)
    w, h, step = int(msg.width), int(msg.height), int(msg.step)
    ch = IMAGE_CHANNELS[msg.encoding]
    buf = np.frombuffer(msg.data, dtype=np.uint8)
    img = buf[: step * h].reshape(h, step)[:, : w * ch].reshape(h, w, ch)
    if msg.encoding == "rgb8":
        img = img if img.flags.c_contiguous else np.ascontiguousarray(img)
        img.flags.writeable = False  # a view of the message: the policy must not write into it
        return img
    if msg.encoding == "bgr8":
        return np.ascontiguousarray(img[..., ::-1])
    return np.repeat(img, 3, axis=2)


def _codec_of(fmt: str) -> str | None:
    """'jpeg' / 'png' from an image_transport format string (e.g. 'rgb8; jpeg compressed bgr8')."""
    f = fmt.lower()
    if "jpeg" in f or "jpg" in f:
        return "jpeg"
    if "png" in f:
        return "png"
    return None


def compressed_image_from_msg(msg, expected=None) -> np.ndarray:
    """sensor_msgs/CompressedImage (jpeg or png) -> (H, W, 3) uint8 RGB array, decoded with Pillow.

    The size is checked against the contract from the file header before any pixel is decoded, so a
    wrong-size (or hostile, huge) image is rejected cheaply. An empty ``format`` is accepted and the
    codec is taken from the data.

    Args:
        msg: sensor_msgs/CompressedImage.
        expected: the contract's CameraSpec; when given, the decoded size must match it.

    Raises:
        ValidationError: listing every problem (unsupported format, empty or undecodable data, codec
            differing from the declared format, size vs contract).
    """
    import io

    from PIL import Image as PILImage

    problems = []
    fmt = str(msg.format)
    declared = _codec_of(fmt)
    if fmt.strip() and declared is None:
        problems.append(f"unsupported format '{fmt}' (supported: {list(COMPRESSED_FORMATS)})")
    data = bytes(msg.data)
    if not data:
        problems.append("data is empty")
    if problems:
        raise ValidationError(problems)
    try:
        pil = PILImage.open(io.BytesIO(data))
    except (OSError, ValueError, PILImage.DecompressionBombError) as e:
        raise ValidationError([f"data is not a decodable JPEG/PNG image ({e})"]) from e
    actual = {"JPEG": "jpeg", "PNG": "png"}.get(pil.format or "")
    if actual is None:
        problems.append(f"data is a {pil.format} image, not JPEG or PNG")
    elif declared is not None and actual != declared:
        problems.append(f"format says '{declared}' but the data is {actual}")
    w, h = pil.size
    if expected is not None and (w, h) != (expected.width, expected.height):
        problems.append(f"image is {w}x{h} but the contract expects {expected.width}x{expected.height}"
                        f"{_camera_label(expected)}")
    if problems:
        raise ValidationError(problems)
    try:
        rgb = np.asarray(pil.convert("RGB"), dtype=np.uint8)
    except (OSError, ValueError, PILImage.DecompressionBombError) as e:  # truncated / corrupt payload
        raise ValidationError([f"{actual} data could not be decoded ({e})"]) from e
    return rgb


def _as_uint8_image(array, encoding: str) -> tuple[np.ndarray, list[str]]:
    problems = []
    a = np.asarray(array)
    if a.dtype != np.uint8:
        problems.append(f"image dtype must be uint8, got {a.dtype}")
    if encoding not in IMAGE_CHANNELS:
        problems.append(f"unsupported encoding '{encoding}' (supported: {list(IMAGE_CHANNELS)})")
    if a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (1, 3)):
        if encoding in ("rgb8", "bgr8") and (a.ndim != 3 or a.shape[2] != 3):
            problems.append(f"{encoding} needs an (H, W, 3) RGB array, got shape {a.shape}")
    else:
        problems.append(f"image must be (H, W), (H, W, 1) or (H, W, 3), got shape {a.shape}")
    if a.ndim >= 2 and (a.shape[0] == 0 or a.shape[1] == 0):
        problems.append(f"image is empty, shape {a.shape}")
    return a, problems


def image_to_msg(array: np.ndarray, stamp: float, encoding: str = "rgb8", frame_id: str = ""):
    """(H, W, 3) uint8 RGB array -> sensor_msgs/Image in ``encoding`` (rgb8, bgr8 or mono8).

    For mono8 the array may also be (H, W) or (H, W, 1) grey; an RGB array is converted to luma
    (ITU-R BT.601 weights).

    Raises:
        ValidationError: on a wrong dtype, shape or encoding.
    """
    from sensor_msgs.msg import Image

    a, problems = _as_uint8_image(array, encoding)
    if problems:
        raise ValidationError(problems)
    if encoding == "bgr8":
        a = a[..., ::-1]
    elif encoding == "mono8":
        if a.ndim == 3 and a.shape[2] == 3:
            a = np.rint(a.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32))
            a = np.clip(a, 0, 255).astype(np.uint8)
        a = a.reshape(a.shape[0], a.shape[1])
    a = np.ascontiguousarray(a)
    msg = Image()
    msg.header.stamp = sec_to_time(stamp)
    msg.header.frame_id = frame_id
    msg.height, msg.width = int(a.shape[0]), int(a.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = int(msg.width * IMAGE_CHANNELS[encoding])
    msg.data = a.tobytes()
    return msg


def compressed_image_to_msg(array: np.ndarray, stamp: float, fmt: str = "jpeg", quality: int = 90,
                            frame_id: str = ""):
    """(H, W, 3) uint8 RGB array -> sensor_msgs/CompressedImage (jpeg or png, encoded with Pillow).

    ``format`` follows image_transport's convention, e.g. ``rgb8; jpeg compressed rgb8``.

    Raises:
        ValidationError: on a wrong dtype/shape or an unsupported format.
    """
    import io

    from PIL import Image as PILImage
    from sensor_msgs.msg import CompressedImage

    a, problems = _as_uint8_image(array, "rgb8")
    if fmt not in COMPRESSED_FORMATS:
        problems.append(f"unsupported format '{fmt}' (supported: {list(COMPRESSED_FORMATS)})")
    if problems:
        raise ValidationError(problems)
    out = io.BytesIO()
    if fmt == "jpeg":
        PILImage.fromarray(np.ascontiguousarray(a)).save(out, format="JPEG", quality=int(quality))
    else:
        PILImage.fromarray(np.ascontiguousarray(a)).save(out, format="PNG")
    msg = CompressedImage()
    msg.header.stamp = sec_to_time(stamp)
    msg.header.frame_id = frame_id
    msg.format = f"rgb8; {fmt} compressed rgb8"
    msg.data = out.getvalue()
    return msg


def instruction_check(text, max_len: int) -> str:
    """Validate a task instruction; returns it with surrounding whitespace removed.

    Args:
        text: the instruction (std_msgs/String data or a service request field).
        max_len: largest allowed length in characters (after stripping).

    Raises:
        ValidationError: if it is not a string, is empty or whitespace-only, is longer than
            ``max_len`` characters, or contains control characters other than tab and newline.
    """
    if not isinstance(text, str):
        raise ValidationError([f"instruction must be a string, got {type(text).__name__}"])
    problems = []
    s = text.strip()
    if not s:
        problems.append("instruction is empty")
    if len(s) > max_len:
        problems.append(f"instruction has {len(s)} characters, more than the maximum {max_len}")
    bad = sorted({f"U+{ord(c):04X}" for c in s if (ord(c) < 32 and c not in "\t\n\r") or ord(c) == 127})
    if bad:
        problems.append(f"instruction contains control characters {bad}")
    if problems:
        raise ValidationError(problems)
    return s
