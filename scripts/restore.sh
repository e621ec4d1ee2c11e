#!/usr/bin/env bash
# Runbook wrapper: restore a backup (file, id or `latest`).
#   ./scripts/restore.sh FILE [--db-only|--redis-only|--config-only] [--test] [--force]
# --test restores into a scratch database, checks it and drops it. The key comes from
# ENCRYPT_KEY (or STEADYFLOW_AGE_IDENTITY). Exit codes: see `steadyflow restore --help`.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/_steadyflow.sh"
if [ $# -lt 1 ] || [ "${1#-}" != "$1" ]; then
    echo "usage: restore.sh FILE [--db-only|--redis-only|--config-only] [--test] [--force]" >&2
    exit 2
fi
file="$1"; shift
args=()
for a in "$@"; do
    case "$a" in
        --db-only|--redis-only|--config-only|--test|--force) args+=("$a") ;;
        *) echo "restore.sh: unknown option $a" >&2; exit 2 ;;
    esac
done
exec "$(steadyflow_bin)" restore "$file" "${args[@]}"
