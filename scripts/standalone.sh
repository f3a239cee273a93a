#!/usr/bin/env bash
# A real Spark standalone cluster on loopback: one master and N workers, from the sbin scripts
# pyspark's wheel ships: its sbin/spark-daemon.sh starts the master and each worker (what
# Spark's start-master.sh/start-worker.sh do; the wheel leaves those two out). No Spark download
# needed; the same on Spark 3.5 and 4.
#   scripts/standalone.sh start [WORKERS] [CORES_PER_WORKER]   prints the master URL
#   scripts/standalone.sh stop                                  stops it and removes work dirs
# State (logs, pids, worker work dirs, the master URL in master-url) lives in $SPARKGAN_CLUSTER_DIR
# (default: out/cluster). The master listens on 7077 (what conf/cluster.yaml names) when that port
# is free, else on a free one; either way the printed URL, and master-url, are the ones to use.
# Spark comes from $PYTHON's pyspark: the active venv's, else .venv's.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-${VIRTUAL_ENV:+$VIRTUAL_ENV/bin/python}}
PY=${PY:-.venv/bin/python}
STATE=${SPARKGAN_CLUSTER_DIR:-$PWD/out/cluster}
SPARK_HOME=$($PY -c "import os, pyspark; print(os.path.dirname(pyspark.__file__))")
export SPARK_HOME
export SPARK_MASTER_HOST=127.0.0.1 SPARK_LOCAL_IP=127.0.0.1
export SPARK_LOG_DIR=$STATE/logs SPARK_PID_DIR=$STATE/pids SPARK_WORKER_DIR=$STATE/work
export SPARK_IDENT_STRING=sparkgan
# a free port: $1 when it is free, else any
port() { $PY -c "
import socket, sys
s = socket.socket()
try:
    s.bind(('127.0.0.1', int(sys.argv[1])))
except OSError:
    s.bind(('127.0.0.1', 0))
print(s.getsockname()[1])" "${1:-0}"; }

case "${1:-}" in
start)
  workers=${2:-2}; cores=${3:-1}
  mkdir -p "$STATE"
  SPARK_MASTER_PORT=${SPARK_MASTER_PORT:-$(port 7077)}
  SPARK_MASTER_WEBUI_PORT=$(port)
  export SPARK_MASTER_PORT SPARK_MASTER_WEBUI_PORT
  daemon=("$SPARK_HOME/sbin/spark-daemon.sh" start)
  "${daemon[@]}" org.apache.spark.deploy.master.Master 1 --host 127.0.0.1 --port "$SPARK_MASTER_PORT" \
    --webui-port "$SPARK_MASTER_WEBUI_PORT" >/dev/null
  url="spark://127.0.0.1:$SPARK_MASTER_PORT"
  for _ in $(seq 1 50); do (echo > "/dev/tcp/127.0.0.1/$SPARK_MASTER_PORT") 2>/dev/null && break; sleep 0.2; done
  for i in $(seq 1 "$workers"); do
    "${daemon[@]}" org.apache.spark.deploy.worker.Worker "$i" --webui-port "$(port)" --cores "$cores" \
      --memory "${SPARK_WORKER_MEMORY:-3g}" "$url" >/dev/null
  done
  echo "$url" > "$STATE/master-url"
  echo "webui=http://127.0.0.1:$SPARK_MASTER_WEBUI_PORT" > "$STATE/master-webui"
  echo "$url"
  ;;
stop)
  if [ -d "$STATE/pids" ]; then
    for pid_file in "$STATE"/pids/*.pid; do
      [ -e "$pid_file" ] || continue
      kill "$(cat "$pid_file")" 2>/dev/null || true
      rm -f "$pid_file"
    done
  fi
  rm -rf "$STATE/work" "$STATE/master-url"
  ;;
*)
  echo "usage: $0 start [WORKERS] [CORES_PER_WORKER] | stop" >&2; exit 2 ;;
esac
