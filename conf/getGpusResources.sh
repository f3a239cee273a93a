#!/usr/bin/env bash
# Spark GPU discovery script (spark.{worker,executor}.resource.gpu.discoveryScript): prints the
# GPUs this node has as Spark's ResourceInformation JSON, e.g. {"name":"gpu","addresses":["0","1"]}.
# CUDA_VISIBLE_DEVICES, when set (containers, MIG slices), limits the list to what the node may use,
# and then the addresses are positions in it (0, 1, ...): TorchDistributor maps an assigned address
# back through CUDA_VISIBLE_DEVICES, as CUDA itself numbers only the visible devices.
set -euo pipefail

if [[ -n "${CUDA_VISIBLE_DEVICES:-}" ]]; then
  count=$(tr ',' '\n' <<<"${CUDA_VISIBLE_DEVICES}" | grep -c .)
  ids=$(seq 0 $((count - 1)))
elif command -v nvidia-smi >/dev/null 2>&1; then
  ids=$(nvidia-smi --query-gpu=index --format=csv,noheader)
else
  echo "getGpusResources.sh: nvidia-smi not found and CUDA_VISIBLE_DEVICES unset: no GPUs on $(hostname)" >&2
  ids=""
fi

addresses=""
while read -r id; do
  id="${id//[[:space:]]/}"
  [[ -z "${id}" ]] && continue
  addresses="${addresses:+${addresses},}\"${id}\""
done <<<"${ids}"
printf '{"name":"gpu","addresses":[%s]}\n' "${addresses}"
