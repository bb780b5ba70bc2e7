#!/bin/sh
# warren hook for pool_failover / pool_failback (see config/active-passive-hooks.toml): asks
# for UNIT to be started when the backups took over, stopped when a primary is back.
#
#   exec = ["/etc/warren/hooks/failover.sh", "passive-frontends.target"]
#
# warren runs as the unprivileged user `warren` with NoNewPrivileges=yes (systemd/warren.service),
# and so does this hook: it cannot start a unit itself (no sudo, no polkit prompt). It writes
# the request, `start` or `stop`, to /var/lib/warren/switch/UNIT; the root-side unit
# warren-switch@UNIT.path sees it and starts or stops UNIT. The operator enables that path unit
# for exactly the units warren may switch, and a request for any other unit does nothing:
#
#   sudo systemctl enable --now warren-switch@passive-frontends.target.path
#
# The second argument, optional, is another request directory (the tests use one).
#
# warren runs hooks one at a time per hook, with a clean environment: PATH plus WARREN_EVENT,
# WARREN_POOL, WARREN_BACKEND, WARREN_BACKEND_ADDR, WARREN_ADMIN_STATE, WARREN_AVAILABLE,
# WARREN_TOTAL, WARREN_PLANNED. A planned failover (every primary drained) still starts UNIT:
# the backups carry the pool either way. What it prints goes to warren's log; a non-zero
# exit is logged and counted in warren_hook_runs_total{result="failed"}; a run longer than the
# hook's timeout is killed (result="timeout").
set -eu

unit=${1:?usage: failover.sh UNIT [REQUEST_DIR]}
dir=${2:-/var/lib/warren/switch}
what="pool ${WARREN_POOL:-?}: ${WARREN_EVENT:-?} (${WARREN_AVAILABLE:-?}/${WARREN_TOTAL:-?} available)"

# A unit name, never a path: the request file is named after it.
case $unit in
'' | .* | */*)
    echo "failover.sh: '$unit' is not a unit name" >&2
    exit 2
    ;;
esac

case "${WARREN_EVENT:-}" in
pool_failover) verb=start ;;
pool_failback) verb=stop ;;
*)
    echo "$what: nothing to do"
    exit 0
    ;;
esac

# Written aside and renamed into place, so the root side never reads half a request.
mkdir -p "$dir"
printf '%s\n' "$verb" >"$dir/.$unit.new"
mv -f "$dir/.$unit.new" "$dir/$unit"
echo "$what: asked to $verb $unit ($dir/$unit)"
