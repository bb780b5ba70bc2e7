#!/usr/bin/env bash
# warren in five minutes, on one machine: a two-node RabbitMQ cluster on loopback, warren in
# front of it, a publisher and a consumer running through warren while a node is drained and
# undrained, then `warren ctl status` and a few metrics. Everything is removed at the end.
#
#   bash scripts/demo.sh          # as root on a fresh Debian/Ubuntu machine (installs RabbitMQ)
#
# Nodes: demo1 on 127.0.1.1, demo2 on 127.0.1.2 (AMQP 5672, management 15672 on each, like two
# hosts); warren listens on 127.0.0.1:${WARREN_DEMO_PORT:-5670}, admin API on 127.0.0.1:9901
# (set WARREN_DEMO_ADMIN_PORT to change it). On a shared host, a port that is taken is replaced
# by the next free one (and said so), and a node name another cluster already runs fails at
# once. A failed run keeps its logs (warren's, the client's, the nodes') in
# /tmp/warren-demo-failed-TIME and prints where.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)
DEMO_DIR=${WARREN_DEMO_DIR:-/tmp/warren-demo}
PORT=${WARREN_DEMO_PORT:-5670}
ADMIN_PORT=${WARREN_DEMO_ADMIN_PORT:-9901}
# WARREN_DEMO_PROFILE=dev reuses the test build (scripts/test.sh runs the demo that way).
PROFILE=${WARREN_DEMO_PROFILE:-release}
case "$PROFILE" in
release) TARGET_DIR=release ;;
dev) TARGET_DIR=debug ;;
*)
    echo "WARREN_DEMO_PROFILE must be release or dev, not $PROFILE" >&2
    exit 2
    ;;
esac
WARREN=$ROOT/target/$TARGET_DIR/warren
CLIENT=$ROOT/target/$TARGET_DIR/examples/amqp_client
export WARREN_ADMIN=http://127.0.0.1:$ADMIN_PORT

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
run() {
    printf '$ %s\n' "$*"
    "$@"
}

WARREN_PID=
CLIENT_PID=
cleanup() {
    local rc=$?
    set +e
    [ -n "$CLIENT_PID" ] && kill "$CLIENT_PID" 2>/dev/null
    [ -n "$WARREN_PID" ] && kill "$WARREN_PID" 2>/dev/null && wait "$WARREN_PID" 2>/dev/null
    if [ "$rc" -ne 0 ] && [ -d "$DEMO_DIR" ]; then
        # Keep what explains the failure before the cluster directory goes.
        local kept
        kept=/tmp/warren-demo-failed-$(date +%Y%m%d-%H%M%S)
        mkdir -p "$kept"
        cp "$DEMO_DIR"/*.log "$DEMO_DIR"/*.out "$DEMO_DIR"/*.err "$DEMO_DIR"/warren.toml "$kept"/ 2>/dev/null
        for node in "$DEMO_DIR"/*/log; do
            [ -d "$node" ] && cp -r "$node" "$kept/$(basename "$(dirname "$node")")-log"
        done
        for node in "$DEMO_DIR"/*/start.out; do
            [ -f "$node" ] && cp "$node" "$kept/$(basename "$(dirname "$node")")-start.out"
        done
        echo "demo failed (exit $rc): its logs are kept in $kept" >&2
    fi
    bash scripts/rabbitmq.sh cleanup "$DEMO_DIR" >/dev/null 2>&1
}
trap cleanup EXIT

# True when something accepts connections on HOST:PORT.
port_taken() {
    (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
}

# free_port HOST PORT [WHAT]: PORT if nothing listens on it, else the next free one (said so).
free_port() {
    local host=$1 port=$2 what=${3:-port}
    while port_taken "$host" "$port"; do
        port=$((port + 1))
    done
    [ "$port" -eq "$2" ] || echo "$what $host:$2 is taken on this host: using $port" >&2
    echo "$port"
}

# Wait (bounded) until a TCP port answers; bash's /dev/tcp needs no extra tool.
wait_port() {
    local host=$1 port=$2 i
    for i in $(seq 1 100); do
        (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing answers on $host:$port" >&2
    return 1
}

# GET a path of the admin API without curl.
admin_get() {
    exec 3<>"/dev/tcp/127.0.0.1/$ADMIN_PORT"
    printf 'GET %s HTTP/1.1\r\nHost: warren\r\nConnection: close\r\n\r\n' "$1" >&3
    sed '1,/^\r$/d' <&3
    exec 3<&-
}

say "1. Install what is missing"
bash scripts/rabbitmq.sh install
if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo not found: install Rust stable with rustup (https://rustup.rs)" >&2
    exit 1
fi
cargo build --profile "$PROFILE" --quiet --bin warren --example amqp_client

say "2. Start a two-node RabbitMQ cluster (demo1, demo2)"
rm -rf "$DEMO_DIR"
mkdir -p "$DEMO_DIR"
PORT=$(free_port 127.0.0.1 "$PORT" "warren's port")
ADMIN_PORT=$(free_port 127.0.0.1 "$ADMIN_PORT" "warren's admin port")
export WARREN_ADMIN=http://127.0.0.1:$ADMIN_PORT
AMQP_PORT=5672
MGMT_PORT=15672
while port_taken 127.0.1.1 "$AMQP_PORT" || port_taken 127.0.1.2 "$AMQP_PORT"; do
    AMQP_PORT=$((AMQP_PORT + 1))
done
while port_taken 127.0.1.1 "$MGMT_PORT" || port_taken 127.0.1.2 "$MGMT_PORT"; do
    MGMT_PORT=$((MGMT_PORT + 1))
done
# Distribution ports 11 apart: each node's rabbitmqctl takes the 10 ports above its own.
DIST1=$(free_port 127.0.0.1 25701 "distribution port")
DIST2=$(free_port 127.0.0.1 $((DIST1 + 11)) "distribution port")
bash scripts/rabbitmq.sh cluster "$DEMO_DIR" \
    "demo1:$AMQP_PORT:$DIST1:$MGMT_PORT:127.0.1.1" "demo2:$AMQP_PORT:$DIST2:$MGMT_PORT:127.0.1.2"

say "3. Start warren in front of it"
cat >"$DEMO_DIR/warren.toml" <<EOF
[admin]
listen = "127.0.0.1:$ADMIN_PORT"

[[listener]]
name = "amqp"
listen = "127.0.0.1:$PORT"
pool = "rabbitmq"
connect_timeout = "5s"
idle_timeout = "120s"

[pool.rabbitmq]
balance = "round_robin"

# The management API's health check: it also lets warren refuse to drain a quorum-critical node.
[pool.rabbitmq.health]
kind = "http"
url = "http://{host}:$MGMT_PORT/api/health/checks/alarms"
user = "guest"
password = "guest"
interval = "1s"
timeout = "800ms"
rise = 2
fall = 2

[[pool.rabbitmq.backend]]
name = "demo1"
addr = "127.0.1.1:$AMQP_PORT"

[[pool.rabbitmq.backend]]
name = "demo2"
addr = "127.0.1.2:$AMQP_PORT"
EOF
run "$WARREN" check --config "$DEMO_DIR/warren.toml"
"$WARREN" run --config "$DEMO_DIR/warren.toml" 2>"$DEMO_DIR/warren.log" &
WARREN_PID=$!
wait_port 127.0.0.1 "$ADMIN_PORT"
wait_port 127.0.0.1 "$PORT"
for i in $(seq 1 50); do
    admin_get /readyz | grep -q ready && break
    sleep 0.2
done

say "4. A publisher (with confirms) and a consumer through warren, for 40 seconds"
"$CLIENT" --addr "127.0.0.1:$PORT" --duration 40s >"$DEMO_DIR/client.out" 2>"$DEMO_DIR/client.err" &
CLIENT_PID=$!
sleep 5
tail -n 1 "$DEMO_DIR/client.out"
run "$WARREN" ctl status

say "5. Drain demo1 (connections still open after 5s are closed; clients reconnect to demo2)"
# The client's queue is a quorum queue; on two nodes it needs both, so RabbitMQ calls each node
# quorum-critical and warren refuses the drain. A drain only moves clients (the node keeps
# running, so the queue keeps its quorum): --force is safe here, and only here.
if ! run "$WARREN" ctl drain demo1 --deadline 5s --wait; then
    echo "(refused: demo1 is quorum-critical; forcing it, since the node keeps running)"
    run "$WARREN" ctl drain demo1 --deadline 5s --wait --force
fi
sleep 3
tail -n 1 "$DEMO_DIR/client.out"
run "$WARREN" ctl status

say "6. Undrain demo1"
run "$WARREN" ctl undrain demo1 --wait-healthy
run "$WARREN" ctl status

say "7. Let the clients finish"
CLIENT_RC=0
wait "$CLIENT_PID" || CLIENT_RC=$?
CLIENT_PID=
tail -n 3 "$DEMO_DIR/client.out"

say "8. A few metrics"
admin_get /metrics | grep -E '^warren_(backend_connections_total|backend_up|pool_available_backends|connections_closed_total\{[^}]*reason="drain"|hook_runs_total|config_reloads_total)' || true

say "9. Clean up"
if [ "$CLIENT_RC" -eq 0 ]; then
    echo "demo done: no confirmed message was lost while demo1 was drained and undrained"
else
    echo "demo done, but the client reported lost messages (see $DEMO_DIR/client.out)" >&2
    exit 1
fi
