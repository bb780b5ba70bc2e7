#!/bin/sh
# warren hook for pool_failover / pool_failback (see config/active-passive-hooks.toml):
# starts UNIT when the backups took over, stops it when a primary is back.
#
#   exec = ["/etc/warren/hooks/failover.sh", "passive-frontends.target"]
#
# warren runs hooks one at a time per hook, with a clean environment: PATH plus WARREN_EVENT,
# WARREN_POOL, WARREN_BACKEND, WARREN_BACKEND_ADDR, WARREN_ADMIN_STATE, WARREN_AVAILABLE,
# WARREN_TOTAL, WARREN_PLANNED. A planned failover (every primary drained) still starts UNIT:
# the backups carry the pool either way. A non-zero
# exit is logged and counted in warren_hook_runs_total{result="failed"}; a run longer than the
# hook's timeout is killed (result="timeout").
set -eu

unit=${1:?usage: failover.sh UNIT}
what="pool ${WARREN_POOL:-?}: ${WARREN_EVENT:-?} (${WARREN_AVAILABLE:-?}/${WARREN_TOTAL:-?} available)"

case "${WARREN_EVENT:-}" in
pool_failover)
    logger -t warren-hook "$what: starting $unit"
    systemctl start "$unit"
    ;;
pool_failback)
    logger -t warren-hook "$what: stopping $unit"
    systemctl stop "$unit"
    ;;
*)
    logger -t warren-hook "$what: nothing to do"
    ;;
esac
