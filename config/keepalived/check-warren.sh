#!/bin/sh
# keepalived check for warren: exit 0 when warren's admin API answers 200 on /healthz (the
# process serves) or /readyz (every pool has an available backend), 1 otherwise.
#
#   check-warren.sh healthz|readyz [ADMIN_URL]      (default http://127.0.0.1:9901)
#
# /healthz and /readyz need no token, so nothing secret is needed here.
set -eu

endpoint=${1:?usage: check-warren.sh healthz|readyz [ADMIN_URL]}
admin=${2:-http://127.0.0.1:9901}
case "$endpoint" in
healthz | readyz) ;;
*)
    echo "check-warren.sh: unknown endpoint $endpoint (healthz or readyz)" >&2
    exit 2
    ;;
esac

if curl --silent --fail --max-time 2 --output /dev/null "$admin/$endpoint"; then
    exit 0
fi
exit 1
