#!/usr/bin/env bash
# Runbook wrapper: back up the engine's database and configuration files.
#   ENCRYPT_KEY=k ./scripts/backup.sh --compress --encrypt [--incremental] [--db-only] [--verify]
# --compress is the default (kept for the runbook); --verify reads the new archive back
# once more. Backup directory: $STEADYFLOW_BACKUP_DIR (default ./backups); database: as
# `steadyflow serve` (configs/config.yaml, STEADYFLOW_DATABASE_URL). Exit codes: see
# `steadyflow backup --help`.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/_steadyflow.sh"
bin="$(steadyflow_bin)"
args=()
verify=0
for a in "$@"; do
    case "$a" in
        --compress) ;;
        --encrypt|--incremental|--db-only) args+=("$a") ;;
        --verify) verify=1 ;;
        -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
        *) echo "backup.sh: unknown option $a" >&2; exit 2 ;;
    esac
done
"$bin" backup "${args[@]}"
if [ "$verify" = 1 ]; then
    "$bin" backup verify latest
fi
