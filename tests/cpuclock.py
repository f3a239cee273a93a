"""CPU seconds per test, next to pytest's --durations: what the suite's time is made of.

On two cores and two xdist workers the suite is CPU-bound, so a test's wall time says as much
about its neighbour as about itself; its CPU does not. A test's CPU is that of everything its
xdist worker started (its SparkSession's JVM and Python workers, the jobs it starts, their torchrun
ranks, a cluster's daemons) over the test's setup, call and teardown.

Where the machine allows it (Linux, root, cgroup v1's cpuacct), each pytest process puts itself
in a cgroup of its own and reads the kernel's count for it: every process started from it stays in
that group whatever becomes of its parent, and the CPU of one that exits stays counted. Elsewhere
it adds up the /proc process tree, which misses what exits unreaped or is re-parented to init: on
this machine Spark's Python workers (their CPU left the tree when they exited, so a test could
show negative seconds) and the standalone clusters' daemons, half the suite's CPU in all.
"""

import glob
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


CGROUP_ROOT = "/sys/fs/cgroup/cpuacct"


class Group:
    """This process, and everything it starts from now on, in a cpuacct cgroup of its own."""

    def __init__(self):
        self.path = os.path.join(CGROUP_ROOT, f"sparkgan-tests-{os.getpid()}")
        os.makedirs(self.path, exist_ok=True)
        try:
            with open(os.path.join(self.path, "cgroup.procs"), "w") as fh:
                fh.write(str(os.getpid()))
        except OSError:
            os.rmdir(self.path)
            raise

    def cpu(self) -> float:
        with open(os.path.join(self.path, "cpuacct.usage")) as fh:
            return int(fh.read()) / 1e9

    def leave(self) -> None:
        """Back to the parent's group; the group goes once nothing is left in it (a daemon a test
        left running keeps it, empty of tests, until it exits)."""
        try:
            with open(os.path.join(os.path.dirname(self.path), "cgroup.procs"), "w") as fh:
                fh.write(str(os.getpid()))
            os.rmdir(self.path)
        except OSError:
            pass


def _group():
    for old in glob.glob(os.path.join(CGROUP_ROOT, "sparkgan-tests-*")):
        if os.path.exists(f"/proc/{old.rsplit('-', 1)[1]}"):
            continue  # a live pytest process's (the other xdist worker may not have joined its own yet)
        try:
            os.rmdir(old)  # an earlier run's, once its last process has exited; a busy one stays
        except OSError:
            pass
    try:
        return Group() if os.path.isdir(CGROUP_ROOT) else None
    except OSError:  # not root, or the hierarchy is read-only: count the process tree instead
        return None


_GROUP = None


def cpu_now() -> float:
    return _GROUP.cpu() if _GROUP else tree_cpu(os.getpid())


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
    start = cpu_now()
    yield
    item.cpu_phase = cpu_now() - start


if os.path.isdir("/proc/self"):
    def pytest_configure(config):
        global _GROUP
        _GROUP = _group()  # xdist's workers start from the controller's group and move to their own

    def pytest_unconfigure(config):
        if _GROUP:
            _GROUP.leave()

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
    # the rest of the machine's: xdist workers' start and collection (and, counting by process tree,
    # what left the tree: see the docstring)
    machine = machine_cpu() - getattr(tr.config, "_cpuclock_machine", machine_cpu())
    how = "kernel's count per cgroup" if _GROUP else "process trees: a lower bound"
    tr.write_sep("=", f"CPU seconds: {sum(per_test.values()):.0f} in tests ({how}), {machine:.0f} on the machine "
                      "(tests/cpuclock.py)")
    if hasattr(tr.config, "_cpuclock_loop"):
        tr.write_line(f"machine speed: a fixed Python loop took {tr.config._cpuclock_loop:.0f} ms of CPU at the "
                      f"start, {loop_ms():.0f} ms at the end")
    for name, cpu in sorted(per_file.items(), key=lambda kv: -kv[1])[:10]:
        tr.write_line(f"{cpu:8.1f}s  {name}")
    tr.write_line("slowest tests by CPU:")
    for nodeid, cpu in sorted(per_test.items(), key=lambda kv: -kv[1])[:12]:
        tr.write_line(f"{cpu:8.1f}s  {nodeid}")
