"""MindSpore in the test process: graph mode on the CPU."""

from __future__ import annotations


def graph_mode_on_cpu() -> None:
    """Graph mode on the CPU, for the tests that run MindSpore in-process. The device can only be chosen before the
    process runs its first kernel; a process that already ran one (an earlier test) stays on it, which is fine when
    it is the CPU (the only device on these machines) and an error otherwise."""
    import mindspore as ms

    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        ms.set_device("CPU")
    except RuntimeError:
        if ms.get_context("device_target") != "CPU":
            raise
