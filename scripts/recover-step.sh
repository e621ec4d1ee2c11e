#!/usr/bin/env bash
# Runbook: stepwise recovery, one phase at a time.
#   ./scripts/recover-step.sh prepare  [BACKUP]   check BACKUP reads back whole, stop the service
#   ./scripts/recover-step.sh database BACKUP     restore the database only (--db-only --force)
#   ./scripts/recover-step.sh redis    BACKUP     restore the Redis keys only (--redis-only --force)
#   ./scripts/recover-step.sh config   [BACKUP]   restore the config files (with BACKUP), then
#                                                 copy configs/$STEADYFLOW_ENV.yaml (production)
#   ./scripts/recover-step.sh deploy              start the service, wait for /health
#   ./scripts/recover-step.sh verify              verify-recovery (STEADYFLOW_TOKEN)
# Settings (stop/start commands, STEADYFLOW_HOME, URL): see scripts/_recover.sh.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/_recover.sh"
step="${1:-}"
backup="${2:-}"
if [ -n "$backup" ]; then backup="$(backup_arg "$backup")"; fi
need_backup() {
    if [ -z "$backup" ]; then echo "recover-step.sh $step: BACKUP is required" >&2; exit 2; fi
}
case "$step" in
    prepare)
        if [ -n "$backup" ]; then timed_step "check backup" step_check_backup "$backup"; fi
        timed_step "stop" step_stop ;;
    database) need_backup; timed_step "restore database" step_restore "$backup" --db-only ;;
    redis) need_backup; timed_step "restore redis" step_restore "$backup" --redis-only ;;
    config)
        if [ -n "$backup" ]; then timed_step "restore config files" step_restore "$backup" --config-only; fi
        timed_step "config (${STEADYFLOW_ENV:-production})" step_config "${STEADYFLOW_ENV:-production}" ;;
    deploy)
        timed_step "start" step_start
        timed_step "wait for health" step_wait_health ;;
    verify) timed_step "verify" step_verify ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "usage: recover-step.sh prepare|database|redis|config|deploy|verify [BACKUP]" >&2; exit 2 ;;
esac
