"""Where a command's CPU goes, by kind of process: every process that exits while it runs, counted
by the kernel (BSD process accounting), not sampled, so a JVM or a Python worker that lives for a
second counts as much as a daemon. Needs root and the `acct` package (apt-get install acct).

    sudo .venv/bin/python scripts/cpu_by_process.py -- make test

The accounting record has no command line, so a thread polls /proc for new processes' command
lines meanwhile (a process younger than the poll, 0.2 s, shows as its program's name). Processes
that outlive the command (a cluster left running) are not counted. What it found in the suite:
docs/performance.md, The test suite.
"""

import argparse
import collections
import os
import subprocess
import sys
import tempfile
import threading
import time

HZ = os.sysconf("SC_CLK_TCK")
# (substring of the command line, kind), first match wins; JVMs by their main class
KINDS = [("CoarseGrainedExecutorBackend", "JVM: executor"), ("deploy.master", "JVM: standalone daemons"),
         ("deploy.worker", "JVM: standalone daemons"), ("launcher.Main", "JVM: spark-class launcher"),
         ("SparkConnectServer", "JVM: Connect server"), ("pyspark-shell", "JVM: driver started by pyspark (a session, python -m pipeline)"),
         ("SparkSubmit", "JVM: spark-submit driver"), ("pyspark.daemon", "Python: Spark worker"),
         ("torch.distributed.run", "Python: torchrun"), ("torchrun", "Python: torchrun"),
         ("torch_run_process_wrapper", "Python: torchrun"), ("/train.py", "Python: torch rank"),
         ("xdist", "Python: pytest"), ("pytest", "Python: pytest"), ("exec(eval(", "Python: pytest"),
         ("airflow", "Python: Airflow"), ("mlflow", "Python: MLflow"), ("moto", "Python: moto S3"),
         ("-m pipeline", "Python: job driver"), ("jobs/", "Python: job driver")]


def kind(cmdline: str, comm: str) -> str:
    for needle, name in KINDS:
        if needle in cmdline:
            return name
    program = os.path.basename(cmdline.split(" ", 1)[0]) if cmdline else comm
    return f"other: {program}"


def watch(stop: threading.Event, seen: dict) -> None:
    """{(pid, start ticks): command line} of every process seen while the command runs."""
    while not stop.is_set():
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/stat") as fh:
                    start = int(fh.read().rsplit(")", 1)[1].split()[19])
                if (int(name), start) not in seen:
                    with open(f"/proc/{name}/cmdline", "rb") as fh:
                        seen[int(name), start] = fh.read().replace(b"\0", b" ").decode(errors="replace")
            except (OSError, ValueError, IndexError):
                continue
        stop.wait(0.2)


def records(pacct: str):
    """(comm, CPU seconds, pid, start time since the epoch) per exited process, from dump-acct."""
    out = subprocess.run(["dump-acct", pacct], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        f = [x.strip() for x in line.split("|")]
        started = time.mktime(time.strptime(f[-1], "%a %b %d %H:%M:%S %Y"))
        yield f[0], (float(f[2]) + float(f[3])) / 100, int(f[9]), started


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("command", nargs=argparse.REMAINDER, help="the command to run, after --")
    ap.add_argument("--top", type=int, default=25, help="kinds to print (default 25)")
    args = ap.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        ap.error("no command: give it after --")
    with open("/proc/stat") as fh:
        boot = next(int(line.split()[1]) for line in fh if line.startswith("btime"))
    seen, stop = {}, threading.Event()
    with tempfile.TemporaryDirectory() as tmp:
        pacct = os.path.join(tmp, "pacct")
        open(pacct, "w").close()
        subprocess.run(["accton", pacct], check=True, capture_output=True)
        watcher = threading.Thread(target=watch, args=(stop, seen), daemon=True)
        watcher.start()
        try:
            rc = subprocess.call(command)
            time.sleep(3)  # a job's JVM exits just after its Python driver: let it be counted
        finally:
            subprocess.run(["accton", "off"], capture_output=True)
            stop.set()
            watcher.join()
        by_pid = collections.defaultdict(list)
        for (pid, start), cmd in seen.items():
            by_pid[pid].append((boot + start / HZ, cmd))
        cpu, count = collections.Counter(), collections.Counter()
        for comm, seconds, pid, started in records(pacct):
            near = [c for t, c in by_pid.get(pid, ()) if abs(t - started) < 2]  # pids are reused
            k = kind(near[0] if near else "", comm)
            cpu[k] += seconds
            count[k] += 1
    print(f"\n{sum(cpu.values()):.0f} CPU-s in {sum(count.values())} processes (exit status {rc})")
    for k, seconds in cpu.most_common(args.top):
        print(f"{seconds:8.1f} s {count[k]:6d}  {k}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
