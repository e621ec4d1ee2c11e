#!/usr/bin/env bash
# Runbook wrapper: check that a (recovered) node is whole, over its HTTP API.
#   STEADYFLOW_TOKEN=t ./scripts/verify-recovery.sh [--url URL] [--json] [--timeout SECONDS]
# URL defaults to $STEADYFLOW_URL, else http://localhost:8080. Checks /health, /ready, the
# newest backup's journal chain and row counts, instances whose runtime cannot be read,
# and runs a smoke process end to end. Exit 0 only when every check holds (see
# `steadyflow verify-recovery --help`).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/_steadyflow.sh"
args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --json) args+=("$1") ;;
        --url|--timeout)
            if [ $# -lt 2 ]; then echo "verify-recovery.sh: $1 needs a value" >&2; exit 2; fi
            args+=("$1" "$2"); shift ;;
        -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
        *) echo "verify-recovery.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
exec "$(steadyflow_bin)" verify-recovery "${args[@]}"
