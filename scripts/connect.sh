#!/usr/bin/env bash
# Spark's own Connect server on loopback, from the sbin scripts the pyspark wheel ships (Spark 4:
# the server jar is in the wheel). Its Python workers are the stack's venv, which holds the project.
#   scripts/connect.sh start [PORT] [MASTER]   prints the server's URL (sc://127.0.0.1:PORT)
#   scripts/connect.sh stop
# State (logs, pid, the URL) lives in $SPARKGAN_CONNECT_DIR (default: out/connect).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv-spark4/bin/python}
STATE=${SPARKGAN_CONNECT_DIR:-$PWD/out/connect}
SPARK_HOME=$($PY -c "import os, pyspark; print(os.path.dirname(pyspark.__file__))")
PYSPARK_PYTHON=$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")
export SPARK_HOME PYSPARK_PYTHON SPARK_LOCAL_IP=127.0.0.1
export SPARK_LOG_DIR=$STATE/logs SPARK_PID_DIR=$STATE/pids SPARK_IDENT_STRING=sparkgan-connect

case "${1:-}" in
start)
  port=${2:-}
  [ -n "$port" ] || port=$($PY -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
  mkdir -p "$STATE"
  "$SPARK_HOME/sbin/start-connect-server.sh" --master "${3:-local[*]}" \
    --conf "spark.connect.grpc.binding.port=$port" --conf spark.connect.grpc.binding.address=127.0.0.1 \
    --driver-java-options "-Dlog4j2.configurationFile=file:$PWD/conf/log4j2.properties" >/dev/null
  for _ in $(seq 1 240); do (echo > "/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.5; done
  (echo > "/dev/tcp/127.0.0.1/$port") 2>/dev/null || { tail -n 20 "$STATE"/logs/*.out >&2; exit 1; }
  echo "sc://127.0.0.1:$port" | tee "$STATE/connect-url"
  ;;
stop)
  "$SPARK_HOME/sbin/stop-connect-server.sh" >/dev/null || true
  rm -f "$STATE/connect-url"
  ;;
*)
  echo "usage: $0 start [PORT] [MASTER] | stop" >&2; exit 2 ;;
esac
