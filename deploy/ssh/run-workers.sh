#!/usr/bin/env bash
# A sweep played by workers started over ssh, WORKERS_PER_HOST on each host named, all
# sharing one PostgreSQL run store (every host must reach it) and, for demonstrations, one
# cache folder on a shared filesystem (or each host its own: then each generates its own).
#
#   deploy/ssh/run-workers.sh sweep.toml postgresql://lmact@db-host:5432/lmact host1 host2 …
#
# Each host needs lmact installed (pip install "lmact[postgres]") and the sweep file at the
# same path. A worker's output goes to lmact-worker-HOST-I.log on its host.
set -euo pipefail

sweep="${1:?usage: run-workers.sh SWEEP_FILE STORE_URL HOST...}"
store="${2:?usage: run-workers.sh SWEEP_FILE STORE_URL HOST...}"
shift 2
per_host="${WORKERS_PER_HOST:-2}"
cache="${LMACT_CACHE_DIR:-\$HOME/lmact-cache}"

for host in "$@"; do
    for index in $(seq 0 $((per_host - 1))); do
        ssh -n "$host" "nohup lmact sweep '$sweep' --store '$store' --cache-dir $cache \
            > lmact-worker-$host-$index.log 2>&1 &"
    done
done
echo "started $((per_host * $#)) workers; follow them with: lmact report --store '$store'"
