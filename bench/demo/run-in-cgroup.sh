#!/usr/bin/env bash
# Runs the Python seed demo (gen, then read) inside a cgroup-v1 memory cgroup and reports
# wall time and the cgroup's peak memory for each step. Needs root and the package installed
# in .venv (bash scripts/demo.sh does that).
# Usage: bench/demo/run-in-cgroup.sh [limit MiB (1024)] [worksize MiB (4096)] [dir (/var/tmp/outcore-demo)]
set -euo pipefail
cd "$(dirname "$0")/../.."
limit_mb=${1:-1024}
worksize_mb=${2:-4096}
dir=${3:-/var/tmp/outcore-demo}
rel=$(sed -n 's/^[0-9]*:memory://p' /proc/self/cgroup)
group="/sys/fs/cgroup/memory${rel%/}/outcore-demo-$$"
mkdir -p "$group"
trap 'rmdir "$group" 2>/dev/null || true' EXIT
echo $((limit_mb << 20)) > "$group/memory.limit_in_bytes"
rm -rf "$dir"
echo "machine: $(nproc) cores, $(uname -r), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "memory cgroup limit ${limit_mb} MiB, worksize ${worksize_mb} MiB, store $dir"
for step in gen read; do
  echo 0 > "$group/memory.max_usage_in_bytes"
  start=$(date +%s%N)
  sh -c "echo \$\$ > $group/cgroup.procs && exec .venv/bin/python -m outcore.demo --worksize=$worksize_mb $step $dir" 2>/dev/null
  end=$(date +%s%N)
  peak=$(( $(cat "$group/memory.max_usage_in_bytes") >> 20 ))
  ms=$(( (end - start) / 1000000 ))
  printf '%s: %d.%03d s wall (incl. Python start-up), cgroup peak %d MiB\n' "$step" $((ms / 1000)) $((ms % 1000)) "$peak"
done
rm -rf "$dir"
