#!/usr/bin/env bash
# Real RabbitMQ nodes on loopback for warren's tests and demos (Debian/Ubuntu package).
#
#   scripts/rabbitmq.sh install
#       apt-get install rabbitmq-server if missing (as root), and make sure the package's own
#       service is stopped and disabled so it does not hold 5672.
#   scripts/rabbitmq.sh start [--ip IP] NAME AMQP_PORT DIST_PORT MGMT_PORT BASEDIR [EXTRA_CONF_LINE...]
#       start node NAME@localhost detached: AMQP on IP:AMQP_PORT, Erlang distribution on
#       127.0.0.1:DIST_PORT, management on IP:MGMT_PORT (IP: a loopback address, default
#       127.0.0.1; nodes on 127.0.1.1, 127.0.1.2... can share ports, as on separate hosts), everything (data, logs, config, cookie)
#       under BASEDIR/NAME; then wait (bounded) until the node has booted. Extra arguments are
#       appended to rabbitmq.conf as lines, e.g. 'proxy_protocol = true'. Nodes started with
#       the same BASEDIR share an Erlang cookie, so they can be clustered.
#   scripts/rabbitmq.sh stop NAME BASEDIR
#       rabbitmqctl stop, then kill whatever of that node is left (by its pid file).
#   scripts/rabbitmq.sh stop_app NAME BASEDIR | start_app NAME BASEDIR
#       stop/start the RabbitMQ application; the Erlang node keeps running.
#   scripts/rabbitmq.sh logfile NAME BASEDIR
#       print the path of the node's main log file.
#   scripts/rabbitmq.sh ctl NAME BASEDIR ARGS...
#       run rabbitmqctl ARGS against the node (e.g. add_user, list_connections).
#   scripts/rabbitmq.sh upgrade NAME BASEDIR ARGS...
#       run rabbitmq-upgrade ARGS against the node (drain: RabbitMQ's maintenance mode; revive).
#   scripts/rabbitmq.sh cluster BASEDIR NAME:AMQP:DIST:MGMT[:IP]... [-- EXTRA_CONF_LINE...]
#       start every node (in parallel), join the others to the first one, and wait until
#       cluster_status lists every node as running. Extra lines go to every node's config.
#   scripts/rabbitmq.sh kill NAME BASEDIR
#       kill -9 the node's Erlang VM (a hard crash, no clean stop) and wait until it is gone.
#   scripts/rabbitmq.sh freeze NAME BASEDIR / thaw NAME BASEDIR
#       SIGSTOP / SIGCONT the node's Erlang VM: a node that hangs (its sockets stay open, the
#       kernel still completes TCP handshakes, nothing answers) and its recovery.
#   scripts/rabbitmq.sh cleanup BASEDIR
#       stop every node under BASEDIR, then remove BASEDIR.
#   scripts/rabbitmq.sh ctl-ports DIST_PORT AVOID_PORT...
#       print the first of the 10 rabbitmqctl distribution ports `start` gives a node whose
#       dist port is DIST_PORT, clear of every AVOID_PORT (`cluster` avoids all its nodes' ports).
#
# `start` fails at once when another Erlang node on the host has NAME or when one of its ports
# is in use, naming the collision. A node that does not boot prints its logs before failing.
#
# Every wait is bounded: START_TIMEOUT (default 180: a node still booting on a loaded machine
# gets that long; one whose VM died fails at once) and STOP_TIMEOUT (default 30) seconds.
# Only loopback addresses are used.
set -euo pipefail

RABBIT_BIN=/usr/lib/rabbitmq/bin
START_TIMEOUT=${START_TIMEOUT:-180}
STOP_TIMEOUT=${STOP_TIMEOUT:-30}

log() { printf '==> rabbitmq.sh: %s\n' "$*" >&2; }
die() {
    printf 'rabbitmq.sh: error: %s\n' "$*" >&2
    exit 1
}

usage() {
    sed -n '2,43p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

need_installed() {
    [ -x "$RABBIT_BIN/rabbitmq-server" ] || die "RabbitMQ is not installed: run scripts/rabbitmq.sh install (as root)"
}

# The package's own node (started by the postinst where services may start) would hold 5672
# and 25672; stop it and keep it from coming back at boot.
stop_package_service() {
    if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
        systemctl stop rabbitmq-server.service >/dev/null 2>&1 || true
        systemctl disable rabbitmq-server.service >/dev/null 2>&1 || true
    fi
    if command -v service >/dev/null 2>&1; then
        service rabbitmq-server stop >/dev/null 2>&1 || true
    fi
    if command -v update-rc.d >/dev/null 2>&1; then
        update-rc.d rabbitmq-server disable >/dev/null 2>&1 || true
    fi
    # Without an init system the service script may have left a node behind: its pid file.
    local pidfile
    for pidfile in /run/rabbitmq/pid /var/lib/rabbitmq/mnesia/rabbit@*.pid; do
        [ -f "$pidfile" ] || continue
        local pid
        pid=$(cat "$pidfile" 2>/dev/null || true)
        if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
            log "stopping the package's node (pid $pid from $pidfile)"
            kill "$pid" 2>/dev/null || true
            wait_gone "$pid" 15 || kill -9 "$pid" 2>/dev/null || true
        fi
    done
}

# wait_gone PID SECONDS: 0 once the process is gone, 1 if it is still there at the deadline.
wait_gone() {
    local pid=$1 deadline=$((SECONDS + $2))
    while kill -0 "$pid" 2>/dev/null; do
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 0.2
    done
    return 0
}

cmd_install() {
    if [ ! -x "$RABBIT_BIN/rabbitmq-server" ]; then
        [ "$(id -u)" -eq 0 ] || die "rabbitmq-server is missing and installing it needs root"
        command -v apt-get >/dev/null 2>&1 || die "no apt-get: install rabbitmq-server yourself"
        log "installing rabbitmq-server"
        apt-get update
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends rabbitmq-server
    else
        log "rabbitmq-server present"
    fi
    if [ "$(id -u)" -eq 0 ]; then
        stop_package_service
    fi
}

# Paths and environment of node NAME under BASEDIR; sets NODE_DIR and exports RABBITMQ_*.
node_env() {
    local name=$1 basedir=$2
    case "$name" in
    *[!A-Za-z0-9_-]* | "") die "node name '$name' must be letters, digits, _ or -" ;;
    esac
    mkdir -p "$basedir"
    basedir=$(cd "$basedir" && pwd)
    NODE_DIR="$basedir/$name"
    export RABBITMQ_NODENAME="$name@localhost"
    export RABBITMQ_MNESIA_BASE="$NODE_DIR/mnesia"
    export RABBITMQ_LOG_BASE="$NODE_DIR/log"
    export RABBITMQ_CONFIG_FILE="$NODE_DIR/rabbitmq.conf"
    export RABBITMQ_ENABLED_PLUGINS_FILE="$NODE_DIR/enabled_plugins"
    export RABBITMQ_PID_FILE="$NODE_DIR/rabbit.pid"
    # An Erlang VM that dies writes erl_crash.dump in its working directory: keep it with the node.
    export ERL_CRASH_DUMP="$NODE_DIR/erl_crash.dump"
    # The Erlang cookie lives in $HOME/.erlang.cookie for the server and for rabbitmqctl alike:
    # one HOME per BASEDIR gives every node of a BASEDIR (and the CLI) the same cookie without
    # touching root's or the rabbitmq user's cookie.
    export HOME="$basedir/home"
    mkdir -p "$HOME"
    if [ ! -s "$HOME/.erlang.cookie" ]; then
        (umask 077 && head -c 15 /dev/urandom | od -An -tx1 | tr -d ' \n' | tr 'a-f' 'A-F' >"$HOME/.erlang.cookie")
    fi
    chmod 400 "$HOME/.erlang.cookie"
    # rabbitmqctl is an Erlang node too: it listens on a distribution port taken from
    # RABBITMQ_CTL_DIST_PORT_MIN..MAX, by default AMQP port + 30000..+30010 (35672.. for 5672).
    # That default range can hold this node's own AMQP or management port (tests pick ports
    # from the ephemeral range), and a `start_app` whose CLI sits on the AMQP port fails with
    # eaddrinuse. So the CLI range is chosen at start, clear of the node's ports, and kept.
    if [ -f "$NODE_DIR/ctl_ports" ]; then
        # shellcheck disable=SC1091
        . "$NODE_DIR/ctl_ports"
        export RABBITMQ_CTL_DIST_PORT_MIN RABBITMQ_CTL_DIST_PORT_MAX
    fi
}

# ctl_ports DIST_PORT AVOID_PORT...: print the first of 10 consecutive CLI distribution ports
# above DIST_PORT that hold none of AVOID_PORT (the node's own ports, and with `cluster` every
# port of every node: consecutive dist ports would otherwise put one node's CLI range on the
# next node's dist port, and that node fails with dist_port_already_used). Below DIST_PORT when
# nothing fits above.
ctl_ports() {
    local dist=$1 min=$(($1 + 1)) port clash
    shift
    while :; do
        clash=0
        for port in "$dist" "$@"; do
            if [ "$port" -ge "$min" ] && [ "$port" -le $((min + 9)) ]; then
                clash=1
                break
            fi
        done
        [ "$clash" -eq 1 ] || break
        min=$((min + 10))
    done
    if [ $((min + 9)) -gt 65535 ]; then
        min=$((dist - 10))
        for port in "$@"; do
            if [ "$port" -ge "$min" ] && [ "$port" -lt "$dist" ]; then
                min=$((port - 10))
            fi
        done
    fi
    echo "$min"
}

# ctl_port_range AMQP_PORT DIST_PORT MGMT_PORT: write NODE_DIR/ctl_ports with 10 CLI ports above
# DIST_PORT that hold none of the node's ports nor RABBITMQ_SH_AVOID_PORTS (set by `cluster`).
ctl_port_range() {
    local amqp=$1 dist=$2 mgmt=$3 min
    # shellcheck disable=SC2086
    min=$(ctl_ports "$dist" "$amqp" "$mgmt" ${RABBITMQ_SH_AVOID_PORTS:-})
    printf 'RABBITMQ_CTL_DIST_PORT_MIN=%s\nRABBITMQ_CTL_DIST_PORT_MAX=%s\n' "$min" $((min + 9)) >"$NODE_DIR/ctl_ports"
    export RABBITMQ_CTL_DIST_PORT_MIN=$min RABBITMQ_CTL_DIST_PORT_MAX=$((min + 9))
}

# port_taken IP PORT: true when something accepts connections on IP:PORT right now.
port_taken() {
    (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
}

# preflight NAME IP AMQP_PORT DIST_PORT MGMT_PORT: fail at once, saying what collides, when
# another Erlang node already has this name or something already listens on one of the ports
# (another cluster on the same host), instead of a node that does not boot after a long wait.
preflight() {
    local name=$1 ip=$2 amqp=$3 dist=$4 mgmt=$5
    if command -v epmd >/dev/null 2>&1; then
        if epmd -names 2>/dev/null | grep -q "^name $name at port "; then
            die "an Erlang node named $name is already running on this host ($(epmd -names | grep "^name $name at port ")): another cluster uses the name; stop it or choose another name"
        fi
    fi
    local what port host
    for what in "amqp $ip $amqp" "management $ip $mgmt" "distribution 127.0.0.1 $dist"; do
        read -r what host port <<<"$what"
        if port_taken "$host" "$port"; then
            die "the $what port $host:$port of $name is already in use (another cluster or service on this host); choose another port"
        fi
    done
}

ctl() {
    # rabbitmqctl refuses to run as root unless the erlang cookie is readable; HOME is set.
    "$RABBIT_BIN/rabbitmqctl" -n "$RABBITMQ_NODENAME" "$@"
}

node_pid() {
    [ -f "$RABBITMQ_PID_FILE" ] || return 1
    local pid
    pid=$(cat "$RABBITMQ_PID_FILE" 2>/dev/null || true)
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

cmd_start() {
    local ip=127.0.0.1
    if [ "${1:-}" = --ip ]; then
        [ $# -ge 2 ] || usage
        ip=$2
        shift 2
    fi
    case "$ip" in
    127.*) ;;
    *) die "--ip $ip: only loopback addresses (127.0.0.0/8) are used" ;;
    esac
    [ $# -ge 5 ] || usage
    local name=$1 amqp_port=$2 dist_port=$3 mgmt_port=$4 basedir=$5
    shift 5
    need_installed
    node_env "$name" "$basedir"
    if node_pid >/dev/null && ctl -q ping >/dev/null 2>&1; then
        log "$RABBITMQ_NODENAME is already running"
        return 0
    fi
    preflight "$name" "$ip" "$amqp_port" "$dist_port" "$mgmt_port"
    mkdir -p "$RABBITMQ_MNESIA_BASE" "$RABBITMQ_LOG_BASE"
    ctl_port_range "$amqp_port" "$dist_port" "$mgmt_port"
    {
        echo "listeners.tcp.default = $ip:$amqp_port"
        echo "management.tcp.port = $mgmt_port"
        echo "management.tcp.ip = $ip"
        echo "loopback_users = none"
        local line
        for line in "$@"; do
            echo "$line"
        done
    } >"$RABBITMQ_CONFIG_FILE"
    echo "[rabbitmq_management]." >"$RABBITMQ_ENABLED_PLUGINS_FILE"
    export RABBITMQ_DIST_PORT="$dist_port"
    export ERL_EPMD_ADDRESS=127.0.0.1
    # Erlang distribution on loopback only (it listens on every interface by default). No busy
    # waiting: an idle scheduler sleeps instead of spinning, so the nodes of a test cluster leave
    # the CPU to warren, the client and the other tests beside them (RabbitMQ's advice for hosts
    # whose CPUs are shared).
    export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1} +sbwt none +sbwtdcpu none +sbwtdio none"
    log "starting $RABBITMQ_NODENAME (amqp $ip:$amqp_port, dist $dist_port, management $ip:$mgmt_port) in $NODE_DIR"
    "$RABBIT_BIN/rabbitmq-server" -detached >>"$NODE_DIR/start.out" 2>&1 ||
        die "rabbitmq-server -detached failed: $(tail -n 20 "$NODE_DIR/start.out")"
    # A node whose VM still runs is still booting: on a loaded machine (nodes of a cluster boot
    # side by side, on CPUs shared with builds) that takes longer, so it gets up to
    # START_TIMEOUT. A VM that is gone will never boot: that fails at once, saying why.
    # "Gone" needs two checks in a row (a pid file read while being rewritten looks empty).
    local deadline=$((SECONDS + START_TIMEOUT)) started=0 missing=0
    while :; do
        if ctl -q await_startup --timeout 5 >/dev/null 2>&1; then
            log "$RABBITMQ_NODENAME is up after $((SECONDS - deadline + START_TIMEOUT))s"
            return 0
        fi
        if node_pid >/dev/null; then
            started=1 missing=0
        elif [ "$started" -eq 1 ] || [ -f "$NODE_DIR/erl_crash.dump" ]; then
            missing=$((missing + 1))
            [ "$missing" -lt 2 ] || boot_failure "$RABBITMQ_NODENAME stopped while booting"
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            boot_failure "$RABBITMQ_NODENAME did not boot within ${START_TIMEOUT}s"
        fi
        sleep 0.5
    done
}

# boot_failure MESSAGE: print what the node left (its log, the start script's output, the
# crash dump's reason), then die with MESSAGE.
boot_failure() {
    # The main log may not exist yet (a node that dies early writes only its startup log), so
    # every non-empty log of the node is shown, or it is said that there is none.
    local file shown=0
    for file in "$RABBITMQ_LOG_BASE"/*.log; do
        [ -s "$file" ] || continue
        log "last lines of $file:"
        tail -n 30 "$file" >&2
        shown=1
    done
    [ "$shown" -eq 1 ] || log "no log written in $RABBITMQ_LOG_BASE"
    log "last lines of $NODE_DIR/start.out:"
    tail -n 20 "$NODE_DIR/start.out" >&2 2>/dev/null || true
    if [ -f "$NODE_DIR/erl_crash.dump" ]; then
        log "crash dump: $(grep -m1 '^Slogan:' "$NODE_DIR/erl_crash.dump" 2>/dev/null || true)"
    fi
    die "$1"
}

log_path() {
    echo "$RABBITMQ_LOG_BASE/$RABBITMQ_NODENAME.log"
}

cmd_stop() {
    [ $# -eq 2 ] || usage
    local name=$1 basedir=$2
    need_installed
    node_env "$name" "$basedir"
    local pid
    pid=$(node_pid || true)
    ctl -q stop --idempotent >/dev/null 2>&1 || ctl -q stop >/dev/null 2>&1 || true
    if [ -n "$pid" ] && ! wait_gone "$pid" "$STOP_TIMEOUT"; then
        log "$RABBITMQ_NODENAME (pid $pid) did not stop within ${STOP_TIMEOUT}s: killing it"
        kill -9 "$pid" 2>/dev/null || true
        wait_gone "$pid" 5 || true
    fi
    # The node's helpers (erl_child_setup, inet_gethost) exit with its beam. epmd is shared by
    # every Erlang node on the machine (another test's node may be registering right now), so it
    # is left running: a small daemon on 4369 that holds no node state.
    rm -f "$RABBITMQ_PID_FILE"
    log "$RABBITMQ_NODENAME stopped"
}

cmd_app() {
    [ $# -eq 3 ] || usage
    local action=$1 name=$2 basedir=$3
    need_installed
    node_env "$name" "$basedir"
    timeout "$STOP_TIMEOUT" "$RABBIT_BIN/rabbitmqctl" -n "$RABBITMQ_NODENAME" -q "$action" >/dev/null ||
        die "rabbitmqctl $action on $RABBITMQ_NODENAME failed"
    if [ "$action" = start_app ]; then
        ctl -q await_startup --timeout "$START_TIMEOUT" >/dev/null ||
            die "$RABBITMQ_NODENAME did not start its app within ${START_TIMEOUT}s"
    fi
}

cmd_logfile() {
    [ $# -eq 2 ] || usage
    node_env "$1" "$2"
    log_path
}

cmd_ctl() {
    [ $# -ge 3 ] || usage
    local name=$1 basedir=$2
    shift 2
    need_installed
    node_env "$name" "$basedir"
    timeout "$STOP_TIMEOUT" "$RABBIT_BIN/rabbitmqctl" -n "$RABBITMQ_NODENAME" "$@"
}
cmd_upgrade() {
    [ $# -ge 3 ] || usage
    local name=$1 basedir=$2
    shift 2
    need_installed
    node_env "$name" "$basedir"
    timeout "$STOP_TIMEOUT" "$RABBIT_BIN/rabbitmq-upgrade" -n "$RABBITMQ_NODENAME" "$@"
}

cmd_cluster() {
    [ $# -ge 2 ] || usage
    local basedir=$1
    shift
    local specs=() extra=()
    while [ $# -gt 0 ]; do
        if [ "$1" = -- ]; then
            shift
            extra=("$@")
            break
        fi
        specs+=("$1")
        shift
    done
    [ "${#specs[@]}" -ge 1 ] || usage
    need_installed
    local spec names=() fields
    for spec in "${specs[@]}"; do
        IFS=: read -r -a fields <<<"$spec"
        [ "${#fields[@]}" -eq 4 ] || [ "${#fields[@]}" -eq 5 ] ||
            die "node spec '$spec' must be NAME:AMQP_PORT:DIST_PORT:MGMT_PORT[:IP]"
        names+=("${fields[0]}")
    done
    # The shared cookie is made once, before the nodes start side by side.
    (node_env "${names[0]}" "$basedir")
    # Each node's CLI port range keeps clear of every node's ports, not only its own.
    local avoid=()
    for spec in "${specs[@]}"; do
        IFS=: read -r -a fields <<<"$spec"
        avoid+=("${fields[1]}" "${fields[2]}" "${fields[3]}")
    done
    export RABBITMQ_SH_AVOID_PORTS="${avoid[*]}"

    local pids=() failed=0 pid
    for spec in "${specs[@]}"; do
        IFS=: read -r -a fields <<<"$spec"
        local ip_args=()
        [ "${#fields[@]}" -eq 5 ] && ip_args=(--ip "${fields[4]}")
        "${BASH_SOURCE[0]}" start "${ip_args[@]}" "${fields[@]:0:4}" "$basedir" "${extra[@]}" &
        pids+=($!)
    done
    for pid in "${pids[@]}"; do
        wait "$pid" || failed=1
    done
    [ "$failed" -eq 0 ] || die "a node of the cluster did not start"
    local first=${names[0]} name
    for name in "${names[@]:1}"; do
        (
            node_env "$name" "$basedir"
            ctl -q stop_app >/dev/null || die "stop_app on $name failed"
            ctl -q join_cluster "$first@localhost" >/dev/null || die "$name could not join $first@localhost"
            ctl -q start_app >/dev/null || die "start_app on $name failed"
        )
    done
    node_env "$first" "$basedir"
    local deadline=$((SECONDS + START_TIMEOUT)) running
    while :; do
        running=$(ctl -q cluster_status --formatter json 2>/dev/null |
            grep -o '"running_nodes":\[[^]]*\]' | grep -o '@localhost' | wc -l || true)
        if [ "${running:-0}" -eq "${#names[@]}" ]; then
            log "cluster of ${#names[@]} node(s) is running: ${names[*]}"
            return 0
        fi
        [ "$SECONDS" -lt "$deadline" ] || die "cluster_status shows ${running:-0} of ${#names[@]} nodes running after ${START_TIMEOUT}s"
        sleep 0.5
    done
}

cmd_kill() {
    [ $# -eq 2 ] || usage
    node_env "$1" "$2"
    local pid
    pid=$(node_pid) || die "$RABBITMQ_NODENAME is not running (no live pid in $RABBITMQ_PID_FILE)"
    kill -9 "$pid"
    wait_gone "$pid" "$STOP_TIMEOUT" || die "$RABBITMQ_NODENAME (pid $pid) survived kill -9"
    log "$RABBITMQ_NODENAME killed (pid $pid)"
}

cmd_signal() {
    [ $# -eq 3 ] || usage
    local signal=$1
    node_env "$2" "$3"
    local pid
    pid=$(node_pid) || die "$RABBITMQ_NODENAME is not running (no live pid in $RABBITMQ_PID_FILE)"
    kill "-$signal" "$pid"
    log "$RABBITMQ_NODENAME sent SIG$signal (pid $pid)"
}

cmd_cleanup() {
    [ $# -eq 1 ] || usage
    local basedir=$1 dir
    [ -d "$basedir" ] || return 0
    for dir in "$basedir"/*/; do
        [ -f "$dir/rabbitmq.conf" ] || continue
        dir=${dir%/}
        cmd_stop "${dir##*/}" "$basedir" || true
    done
    # A node that had not written its pid file yet (stopped while booting) is found by its
    # command line, which names the cluster's directory, so none is left behind holding its
    # node name.
    pkill -9 -f -- "$basedir/" 2>/dev/null || true
    rm -rf "$basedir"
}

[ $# -ge 1 ] || usage
command=$1
shift
case "$command" in
install) cmd_install "$@" ;;
start) cmd_start "$@" ;;
stop) cmd_stop "$@" ;;
stop_app | start_app) cmd_app "$command" "$@" ;;
logfile) cmd_logfile "$@" ;;
ctl) cmd_ctl "$@" ;;
upgrade) cmd_upgrade "$@" ;;
cluster) cmd_cluster "$@" ;;
kill) cmd_kill "$@" ;;
freeze) cmd_signal STOP "$@" ;;
thaw) cmd_signal CONT "$@" ;;
cleanup) cmd_cleanup "$@" ;;
ctl-ports)
    [ $# -ge 1 ] || usage
    ctl_ports "$@"
    ;;
*) usage ;;
esac
