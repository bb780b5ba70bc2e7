#!/usr/bin/env bash
# warren against HAProxy and NGINX on this machine, on loopback only: builds warren (release),
# installs the peers (and RabbitMQ, for the amqp workload) when missing (Debian/Ubuntu, as root),
# runs benches/peers/ and writes the results into BENCHMARKS.md (between its "peers:results"
# markers; the text around them is kept).
#
#   bash scripts/bench.sh                 # full run: 5 rounds, ~20 minutes on 2 cores
#   bash scripts/bench.sh --quick         # smoke run: 2 rounds, short slots, ~4 minutes
#   bash scripts/bench.sh --rounds 7      # more rounds
#   bash scripts/bench.sh --workers 4     # worker threads/processes for every proxy (default 2)
#   bash scripts/bench.sh --workloads amqp,latency   # a subset (bulk, churn, latency, amqp, idle, storm, tls)
#   bash scripts/bench.sh --out /tmp/b.md # write elsewhere
#
# Needs root for apt-get and for running the proxies as user nobody (setpriv).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { printf '==> %s\n' "$*"; }

for arg in "$@"; do
    case "$arg" in
        -h|--help) sed -n '2,14p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    esac
done

NGINX_STREAM_MODULE=/usr/lib/nginx/modules/ngx_stream_module.so

missing=()
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
[ -e "$NGINX_STREAM_MODULE" ] || missing+=(libnginx-mod-stream)
command -v iperf3 >/dev/null 2>&1 || missing+=(iperf3)
command -v setpriv >/dev/null 2>&1 || missing+=(util-linux)
# The tls workload makes its certificate with openssl.
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "missing: ${missing[*]}; run this script as root (it installs them with apt-get)" >&2
        exit 1
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "missing: ${missing[*]}; no apt-get here: install them yourself" >&2
        exit 1
    fi
    log "installing ${missing[*]}"
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
else
    log "haproxy, nginx (stream module), iperf3, setpriv, openssl present"
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "run as root: the proxies are started as user nobody through setpriv" >&2
    exit 1
fi

# The amqp workload (in the default set) runs a real RabbitMQ node: install the package if it is
# missing, and keep the package's own service off 5672 (scripts/rabbitmq.sh install does both).
want_amqp=1
prev=
for arg in "$@"; do
    if [ "$prev" = --workloads ]; then
        case ",$arg," in
            *,amqp,*) want_amqp=1 ;;
            *) want_amqp=0 ;;
        esac
    fi
    prev=$arg
done
if [ "$want_amqp" -eq 1 ]; then
    bash scripts/rabbitmq.sh install
fi

log "building warren (release)"
cargo build --release --bin warren

log "running benches/peers/"
cargo bench --bench peers -- --run --command "bash scripts/bench.sh${*:+ $*}" "$@"
