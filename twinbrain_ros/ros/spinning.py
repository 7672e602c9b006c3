# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
"""Spin an rclpy executor in a background thread and stop it without races.

The usual ``threading.Thread(target=executor.spin, daemon=True)`` followed by
``executor.shutdown(); node.destroy_node(); rclpy.shutdown()`` leaves the spin thread running while
the entities it waits on are torn down: rclpy's ``Executor.shutdown`` destroys its wake-up guard
condition right after triggering it (it does not wait for the spinning thread), so a thread that is
rebuilding its wait set at that moment waits without it, and everything after that (node and context
destruction) races with a live wait set. We saw one CI run hang there: the closed probe's spin thread
busy at 100 % holding the GIL while the main thread never got it back.

:class:`SpinThread` stops in the safe order instead. The thread runs
``executor.spin_until_future_complete(stop)`` (the same wait loop as ``spin()``, no per-call timer);
:meth:`SpinThread.stop` completes ``stop``, which wakes the executor through its guard condition
while that guard still exists, joins the thread, and only then shuts the executor down. The caller
destroys nodes and the context afterwards, when nothing waits on them.
"""

from __future__ import annotations

import threading

from rclpy.executors import ExternalShutdownException
from rclpy.task import Future

__all__ = ["SpinThread"]


class SpinThread:
    """``executor`` spun in a daemon thread until :meth:`stop`."""

    def __init__(self, executor, name: str = "ros-spin") -> None:
        self.executor = executor
        self._stop_future = Future(executor=executor)
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self.executor.spin_until_future_complete(self._stop_future)
        except ExternalShutdownException:
            pass  # the context was shut down under us: nothing left to spin
        except BaseException as e:  # a callback raised: keep it for the owner, and let the
            self.error = e  # thread's excepthook print it as a plain spin() thread would
            raise

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout_s: float = 5.0) -> bool:
        """Wake and join the spin thread, then shut the executor down.

        Returns False if the thread did not finish within ``timeout_s`` (it is a daemon thread, so
        the process can still exit; the executor is shut down regardless).
        """
        if not self._stop_future.done():
            self._stop_future.set_result(None)  # schedules a task: triggers the executor's guard
        self._thread.join(timeout_s)
        joined = not self._thread.is_alive()
        self.executor.shutdown(timeout_sec=timeout_s if joined else 0.0)
        return joined
