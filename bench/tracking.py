"""What MLflow tracking costs a job: train_digits (torch engine) on the bundled MNIST digits, timed end
to end with and without --tracking-uri, in the same process and Spark session, runs interleaved
(untracked, tracked, untracked, ...) so a machine's drift hits both alike. The server is a local
`mlflow server` (SQLite backend, local artifacts) on a loopback port, as in tests/test_tracking.py.
Tracked runs log per-epoch metrics from rank 0, the figures and the model (with --register-as).

    python bench/tracking.py [--epochs 3] [--repeats 3]
"""

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

from common import DATA, local_spark, timed


def start_server(root: str):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "mlflow"), "server", "--backend-store-uri",
                             f"sqlite:///{root}/mlflow.db", "--default-artifact-root", f"{root}/artifacts",
                             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    url = f"http://127.0.0.1:{port}"
    for _ in range(240):
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return proc, url
        except OSError:
            time.sleep(0.5)
    os.killpg(proc.pid, 9)
    raise SystemExit("mlflow server did not start")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    from pipeline.cli import main as job

    local_spark()
    table = os.path.join(DATA, "mnist")
    if not os.path.isdir(os.path.join(table, "images")):
        assert job(["ingest", "--source", "mnist", "--output", table, "--runs-table", f"{DATA}/runs"]) == 0
    root = tempfile.mkdtemp(prefix="sparkgan-bench-mlflow-")
    proc, url = start_server(root)
    times = {"untracked": [], "tracked": []}
    try:
        # one run of each first, not counted: the first jobs of a process pay for imports, JIT and caches
        for i in range(-1, args.repeats):
            for kind in ("untracked", "tracked"):
                out = os.path.join(root, f"{kind}-{i}")
                extra = ["--tracking-uri", url, "--register-as", "bench-lenet5"] if kind == "tracked" else []
                seconds, code = timed(job, ["train_digits", "--engine", "torch", "--input", f"{table}/images",
                                            "--output", out, "--epochs", str(args.epochs), "--runs-table",
                                            f"{root}/runs", *extra])
                assert code == 0, kind
                if i >= 0:
                    times[kind].append(seconds)
                print(f"  {kind:<9}  {'warm-up' if i < 0 else f'run {i + 1}'}: {seconds:6.1f} s", flush=True)
    finally:
        os.killpg(proc.pid, 9)  # the server and its uvicorn workers
        proc.wait()
        shutil.rmtree(root, ignore_errors=True)
    base, tracked = statistics.median(times["untracked"]), statistics.median(times["tracked"])
    print(f"train_digits torch, {args.epochs} epochs, {args.repeats} run(s) each, medians: "
          f"untracked {base:.1f} s, tracked {tracked:.1f} s: {tracked / base:.3f}x "
          f"({100 * (tracked / base - 1):+.1f} %)")


if __name__ == "__main__":
    main()
