#!/usr/bin/env bash
# Runbook: quick recovery of a node from a backup (file, id or `latest`).
#   STEADYFLOW_TOKEN=t ./scripts/recover.sh BACKUP [environment]
# environment: the configs/<environment>.yaml to run with (default: production).
# Checks that BACKUP reads back whole, stops the service, restores it
# (restore.sh BACKUP --force: database, Redis keys, config files), copies
# configs/$ENV.yaml to configs/config.yaml, starts the service, waits for /health and runs
# verify-recovery; each step with its duration, and the total. Exit 0 only when the node
# is verified. Stop/start: systemd (default) or docker compose, or your own commands; see
# scripts/_recover.sh for every setting (STEADYFLOW_HOME, STEADYFLOW_STOP_CMD, ...).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/_recover.sh"
case "${1:-}" in
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    ""|-*) echo "usage: recover.sh BACKUP [environment]" >&2; exit 2 ;;
esac
backup="$(backup_arg "$1")"
env="${2:-production}"
if [ ! -f "$STEADYFLOW_HOME/configs/$env.yaml" ]; then
    echo "recover: no configuration for environment '$env' ($STEADYFLOW_HOME/configs/$env.yaml)" >&2
    exit 2
fi
t0=$(date +%s.%N)
timed_step "check backup" step_check_backup "$backup"
timed_step "stop" step_stop
timed_step "restore" step_restore "$backup"
timed_step "config ($env)" step_config "$env"
timed_step "start" step_start
timed_step "wait for health" step_wait_health
timed_step "verify" step_verify
say "recovered from $backup in $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s"
