#!/bin/sh
# warren hook for backend_down / pool_degraded / pool_down (see config/active-passive-hooks.toml):
# posts one line of text as JSON to an alerting webhook given as the first argument.
#
#   exec = ["/etc/warren/hooks/page.sh", "http://127.0.0.1:9093/hooks/warren"]
#
# warren runs it with a clean environment (PATH and the WARREN_* variables, README "Hooks"); the
# admin token is never among them.
set -eu

url=${1:?usage: page.sh WEBHOOK_URL}

# Planned work is not an outage: a drain, the pool_degraded it causes, and a drained node that
# stops for its upgrade come with WARREN_PLANNED=true. Say so in warren's log, page nobody.
if [ "${WARREN_PLANNED:-false}" = true ]; then
    echo "planned: ${WARREN_EVENT:-?} in pool ${WARREN_POOL:-?} ${WARREN_BACKEND:-}" \
        "(${WARREN_ADMIN_STATE:-pool event}), not paged"
    exit 0
fi
text="warren on $(hostname): ${WARREN_EVENT:-?} in pool ${WARREN_POOL:-?}"
if [ -n "${WARREN_BACKEND:-}" ]; then
    text="$text, backend $WARREN_BACKEND (${WARREN_BACKEND_ADDR:-?})"
fi
text="$text; ${WARREN_AVAILABLE:-?} of ${WARREN_TOTAL:-?} available"

# The values are names warren validated (letters, digits, '.', '_', '-') and numbers, so they
# need no JSON escaping.
curl --silent --show-error --fail --max-time 8 \
    --header 'Content-Type: application/json' \
    --data "{\"text\": \"$text\"}" \
    "$url"
