# The steps of the runbook's recovery, shared by recover.sh and recover-step.sh.
# Settings (environment):
#   STEADYFLOW_HOME        the installation (configs/, backups/; default: this checkout)
#   STEADYFLOW_DEPLOY      systemd (default) or compose: how the service is stopped/started
#   STEADYFLOW_SERVICE     the systemd unit or compose service (default: steadyflow)
#   STEADYFLOW_STOP_CMD    a shell command that stops the service and returns once it is
#   STEADYFLOW_START_CMD   ... starts it (both override STEADYFLOW_DEPLOY)
#   STEADYFLOW_URL         where the node answers (default: http://localhost:8080)
#   STEADYFLOW_TOKEN       an admin's or operator's token, for verify-recovery
#   STEADYFLOW_HEALTH_TIMEOUT  seconds to wait for /health after the start (default: 120)
#   STEADYFLOW_BACKUP_DIR  where `backup verify` / `restore` find an id or `latest` (default:
#                          ./backups in STEADYFLOW_HOME; set it to `backup.dir`, e.g.
#                          /var/lib/steadyflow/backups with configs/production.yaml)
. "$(dirname "${BASH_SOURCE[0]}")/_steadyflow.sh"

RECOVER_SCRIPTS="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
STEADYFLOW_HOME="${STEADYFLOW_HOME:-$(cd "$RECOVER_SCRIPTS/.." && pwd)}"
STEADYFLOW_URL="${STEADYFLOW_URL:-http://localhost:8080}"
export STEADYFLOW_URL

# BACKUP as the caller named it: a file relative to the caller's directory becomes absolute
# (the steps run in STEADYFLOW_HOME); an id or `latest` stays as it is.
backup_arg() {
    if [ -f "$1" ]; then echo "$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"; else echo "$1"; fi
}

say() { printf '[recover %s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }

# Runs step NAME (a function) and reports its duration.
timed_step() {
    local name="$1"; shift
    local t0 t1
    t0=$(date +%s.%N)
    say "$name: start"
    "$@"
    t1=$(date +%s.%N)
    say "$name: done in $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }') s"
}

service_cmd() {
    local action="$1" custom
    if [ "$action" = stop ]; then custom="${STEADYFLOW_STOP_CMD:-}"; else custom="${STEADYFLOW_START_CMD:-}"; fi
    if [ -n "$custom" ]; then
        bash -c "$custom"
        return
    fi
    local svc="${STEADYFLOW_SERVICE:-steadyflow}"
    case "${STEADYFLOW_DEPLOY:-systemd}" in
        systemd) systemctl "$action" "$svc" ;;
        compose) docker compose "$action" "$svc" ;;
        *) echo "recover: STEADYFLOW_DEPLOY must be systemd or compose" >&2; return 2 ;;
    esac
}

step_stop() { service_cmd stop; }

step_start() { service_cmd start; }

# The backup must exist and read back whole before anything is stopped.
step_check_backup() {
    local backup="$1"
    (cd "$STEADYFLOW_HOME" && "$(steadyflow_bin)" backup verify "$backup")
}

step_restore() {
    local backup="$1"; shift
    (cd "$STEADYFLOW_HOME" && "$RECOVER_SCRIPTS/restore.sh" "$backup" "$@" --force)
}

step_config() {
    local env="$1"
    local src="$STEADYFLOW_HOME/configs/$env.yaml"
    if [ ! -f "$src" ]; then
        echo "recover: no configuration for environment '$env' ($src)" >&2
        return 2
    fi
    cp "$src" "$STEADYFLOW_HOME/configs/config.yaml"
}

step_wait_health() {
    local limit="${STEADYFLOW_HEALTH_TIMEOUT:-120}" start code
    start=$(date +%s)
    while :; do
        code=$(curl -sk -o /dev/null -w '%{http_code}' --max-time 5 "$STEADYFLOW_URL/health" || true)
        if [ "$code" = 200 ]; then return 0; fi
        if [ $(( $(date +%s) - start )) -ge "$limit" ]; then
            echo "recover: $STEADYFLOW_URL/health did not answer 200 within $limit s (last: ${code:-none})" >&2
            return 1
        fi
        sleep 1
    done
}

step_verify() {
    "$RECOVER_SCRIPTS/verify-recovery.sh" --url "$STEADYFLOW_URL"
}
