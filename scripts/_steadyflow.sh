# Finds the steadyflow binary for the runbook scripts: $STEADYFLOW_BIN, then `steadyflow`
# on PATH, then a build in this checkout (release before debug), else builds one.
steadyflow_bin() {
    if [ -n "${STEADYFLOW_BIN:-}" ]; then echo "$STEADYFLOW_BIN"; return; fi
    if command -v steadyflow >/dev/null 2>&1; then command -v steadyflow; return; fi
    local root
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    for b in "$root/target/release/steadyflow" "$root/target/debug/steadyflow"; do
        if [ -x "$b" ]; then echo "$b"; return; fi
    done
    (cd "$root" && cargo build --release --quiet -p steadyflow) >&2 && echo "$root/target/release/steadyflow"
}
