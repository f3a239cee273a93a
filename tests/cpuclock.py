"""CPU seconds per test, next to pytest's --durations: what the suite's time is made of.

On two cores and two xdist workers the suite is CPU-bound, so a test's wall time says as much
about its neighbour as about itself; its CPU does not. A test's CPU is that of the xdist worker's
whole process tree (its SparkSession's JVM and Python workers, the jobs it starts, their torchrun
ranks) over the test's setup, call and teardown, read from /proc. Processes that outlive their
parent and are re-parented to init (a standalone cluster's daemons) are not counted: the cluster
tests' CPU is a lower bound. Linux only; elsewhere the report is left out.
"""

import os

import pytest

HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def tree_cpu(root: int) -> float:
    """CPU seconds of `root` and its live descendants, each with its reaped children's."""
    parent, cpu = {}, {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:  # gone between listdir and open
            continue
        pid = int(name)
        parent[pid] = int(fields[1])
        cpu[pid] = sum(int(f) for f in fields[11:15]) / HZ  # utime stime cutime cstime
    children = {}
    for pid, ppid in parent.items():
        children.setdefault(ppid, []).append(pid)
    total, stack = 0.0, [root]
    while stack:  # parent links form a tree: each pid is reached once
        pid = stack.pop()
        total += cpu.get(pid, 0.0)
        stack.extend(children.get(pid, ()))
    return total


def machine_cpu() -> float:
    """CPU seconds the whole machine has spent busy since boot (/proc/stat: all but idle and iowait)."""
    with open("/proc/stat") as fh:
        fields = [int(f) for f in fh.readline().split()[1:8]]
    return (sum(fields) - fields[3] - fields[4]) / HZ


def loop_ms() -> float:
    """CPU milliseconds of a fixed pure-Python loop: the machine's speed at this moment. Here the
    same tests have taken 40-70 % more CPU seconds in one session than in another; this number
    tells such a run apart from a slower change."""
    import time

    start, total = time.process_time(), 0
    for i in range(2_000_000):
        total += i * i
    return (time.process_time() - start) * 1000


def _measure(item):
    start = tree_cpu(os.getpid())
    yield
    item.cpu_phase = tree_cpu(os.getpid()) - start


if os.path.isdir("/proc/self"):
    def pytest_sessionstart(session):
        session.config._cpuclock_machine = machine_cpu()
        session.config._cpuclock_loop = loop_ms()

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_setup(item):
        yield from _measure(item)

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_call(item):
        yield from _measure(item)

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_teardown(item):
        yield from _measure(item)

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(item, call):
        outcome = yield
        if hasattr(item, "cpu_phase"):  # user_properties travel from xdist workers to the controller
            outcome.get_result().user_properties.append(("cpu_s", item.cpu_phase))
            del item.cpu_phase


def pytest_terminal_summary(terminalreporter):
    per_test, per_file = {}, {}
    for reports in terminalreporter.stats.values():
        for rep in reports:
            cpu = dict(getattr(rep, "user_properties", ()) or ()).get("cpu_s")
            if cpu is None or not hasattr(rep, "nodeid"):
                continue
            per_test[rep.nodeid] = per_test.get(rep.nodeid, 0.0) + cpu
            name = rep.nodeid.split("::")[0]
            per_file[name] = per_file.get(name, 0.0) + cpu
    if not per_test:
        return
    tr = terminalreporter
    # the rest of the machine's: xdist workers' start and collection, daemons outside a test's tree
    machine = machine_cpu() - getattr(tr.config, "_cpuclock_machine", machine_cpu())
    tr.write_sep("=", f"CPU seconds: {sum(per_test.values()):.0f} in tests, {machine:.0f} on the machine "
                      "(tests/cpuclock.py)")
    if hasattr(tr.config, "_cpuclock_loop"):
        tr.write_line(f"machine speed: a fixed Python loop took {tr.config._cpuclock_loop:.0f} ms of CPU at the "
                      f"start, {loop_ms():.0f} ms at the end")
    for name, cpu in sorted(per_file.items(), key=lambda kv: -kv[1])[:10]:
        tr.write_line(f"{cpu:8.1f}s  {name}")
    tr.write_line("slowest tests by CPU:")
    for nodeid, cpu in sorted(per_test.items(), key=lambda kv: -kv[1])[:12]:
        tr.write_line(f"{cpu:8.1f}s  {nodeid}")
