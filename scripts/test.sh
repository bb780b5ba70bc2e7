#!/usr/bin/env bash
# Pass warren's tests on a fresh machine: install what the tests need (Debian/Ubuntu, as root),
# then run every test target. Needs a Rust stable toolchain (https://rustup.rs).
#
#   bash scripts/test.sh            # from anywhere inside the repository
#
# Extra arguments are passed to `cargo test` (e.g. `bash scripts/test.sh -- --nocapture`).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { printf '==> %s\n' "$*"; }

APT_UPDATED=0
apt_install() {
    if [ "$APT_UPDATED" -eq 0 ]; then
        apt-get update
        APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@"
}

# System packages the tests use. Each entry: a command to look for, and the Debian packages
# that provide it.
install_test_deps() {
    local missing=()
    # setpriv (warren as nobody), unshare (network namespaces), ip and sysctl (set up a
    # namespace's loopback and port range): the reliability suite. unshare, nsenter, setpriv
    # and ps also boot and drive the real systemd of tests/systemd_live.rs.
    if ! command -v setpriv >/dev/null 2>&1 || ! command -v unshare >/dev/null 2>&1 ||
        ! command -v nsenter >/dev/null 2>&1; then
        missing+=(util-linux)
    fi
    if ! command -v ip >/dev/null 2>&1; then
        missing+=(iproute2)
    fi
    if ! command -v sysctl >/dev/null 2>&1; then
        missing+=(procps)
    fi
    # promtool validates config/prometheus/alerts.yml; keepalived checks the pair example.
    if ! command -v promtool >/dev/null 2>&1; then
        missing+=(prometheus)
    fi
    if ! command -v keepalived >/dev/null 2>&1; then
        missing+=(keepalived)
    fi
    # systemd-analyze verifies the units (tests/systemd.rs), and tests/systemd_live.rs boots
    # /lib/systemd/systemd with them installed; curl runs the keepalived check
    # script (tests/examples.rs). As root, those tests fail when the tool is missing.
    if ! command -v systemd-analyze >/dev/null 2>&1; then
        missing+=(systemd)
    fi
    if ! command -v curl >/dev/null 2>&1; then
        missing+=(curl)
    fi
    # tests/package.rs: scripts/package.sh strips the binaries and reads the .deb's glibc
    # version with objdump (binutils), checks the static binary with file; the .deb's postinst
    # needs adduser (dpkg-deb, dpkg and ldd are on every Debian machine).
    if ! command -v objdump >/dev/null 2>&1 || ! command -v strip >/dev/null 2>&1; then
        missing+=(binutils)
    fi
    if ! command -v file >/dev/null 2>&1; then
        missing+=(file)
    fi
    if ! command -v adduser >/dev/null 2>&1; then
        missing+=(adduser)
    fi
    # The peers the benchmark smoke (below) runs against: HAProxy, NGINX with its stream
    # module, iperf3 (benches/peers/ checks for all of them before any workload).
    if ! command -v haproxy >/dev/null 2>&1; then
        missing+=(haproxy)
    fi
    if ! command -v nginx >/dev/null 2>&1; then
        missing+=(nginx-light)
    fi
    if [ ! -e /usr/lib/nginx/modules/ngx_stream_module.so ]; then
        missing+=(libnginx-mod-stream)
    fi
    if ! command -v iperf3 >/dev/null 2>&1; then
        missing+=(iperf3)
    fi
    # etcd for the fleet tests (tests/fleet_etcd.rs starts its own on free loopback ports).
    if ! command -v etcd >/dev/null 2>&1; then
        missing+=(etcd-server)
    fi
    # RabbitMQ for the real-node probe tests and the cluster tests (tests/cluster.rs).
    if [ ! -x /usr/lib/rabbitmq/bin/rabbitmq-server ]; then
        if [ "$(id -u)" -eq 0 ]; then
            log "installing rabbitmq-server"
            bash scripts/rabbitmq.sh install
        else
            log "not root: rabbitmq-server missing; the real-node tests will skip"
        fi
    fi
    if [ "${#missing[@]}" -eq 0 ]; then
        log "test dependencies present"
        return 0
    fi
    if [ "$(id -u)" -ne 0 ]; then
        log "not root: skipping apt-get install of ${missing[*]} (tests that need them may fail)"
        return 0
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        log "no apt-get: install ${missing[*]} yourself (tests that need them may fail)"
        return 0
    fi
    log "installing ${missing[*]}"
    apt_install "${missing[@]}"
    # Debian's etcd-server enables (and, under systemd, starts) a system etcd on the default
    # ports 2379 and 2380: nothing here wants it, so it is stopped and not started at boot.
    if [[ " ${missing[*]} " == *" etcd-server "* ]] && command -v systemctl >/dev/null 2>&1; then
        systemctl disable etcd >/dev/null 2>&1 || true
        systemctl stop etcd >/dev/null 2>&1 || true
    fi
}

if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo not found: install Rust stable with rustup (https://rustup.rs)" >&2
    exit 1
fi

install_test_deps

# The packaging tests' static build (a cold build of warren and its dependencies, about three
# CPU minutes) starts now, beside the test build, in a target dir of its own (cargo would
# otherwise queue it behind the test build's lock on target/). Left for the packaging lane
# below, it was the last lane to end: at nice 19 it got the CPU only when the tests left it.
# tests/package.rs then finds it built, or waits on cargo's lock for it (the variable reaches
# scripts/package.sh through the test).
export WARREN_PACKAGE_TARGET_DIR=target/package-static
prebuild_out=$(mktemp -d)
log "static build for tests/package.rs, beside the test build (nice 10): scripts/package.sh static"
( WARREN_PACKAGE_PROFILE=dev WARREN_PACKAGE_OUT="$prebuild_out" nice -n 10 \
    bash scripts/package.sh static >"$prebuild_out/log" 2>&1; echo $? >"$prebuild_out/rc" ) &
log "cargo test --all-targets --no-run"
cargo test --all-targets --no-run "$@"

# Lanes at once. The machine has few CPUs and the lanes mostly wait (on RabbitMQ, etcd, timers):
#   - package: tests/package.rs, about three CPU minutes of a cold static build, at nice 19 so
#     it takes the CPU only when the others leave it;
#   - cluster-1 and cluster-2: the real-cluster suite (tests/cluster.rs, about six minutes alone)
#     split by test name into two processes. Each runs its clusters one at a time; the groups'
#     node names differ (a node name is unique on the host), and the two `proxy_protocol` tests,
#     whose clusters share a name, are both in cluster-1. A test added later runs in cluster-2;
#   - others: every other target, one after another, printing as it goes. The other lanes'
#     output follows when all have ended.
# Then, alone, the targets that take tens of thousands of ephemeral ports or descriptors: beside
# a real cluster they once kept a node from booting (its Erlang distribution port was taken).
cargo_args=()
test_args=()
for arg in "$@"; do
    if [ "${#test_args[@]}" -gt 0 ] || [ "$arg" = -- ]; then
        test_args+=("$arg")
    else
        cargo_args+=("$arg")
    fi
done
lane_dir=$(mktemp -d)
lanes=()
lane() {
    local name=$1
    shift
    lanes+=("$name")
    log "lane $name (output when every lane has ended): $*"
    ( "$@" >"$lane_dir/$name.log" 2>&1; echo $? >"$lane_dir/$name.rc" ) &
}
cluster_one=(rolling_upgrade_walks a_two_node_cluster proxy_protocol)
cluster_two=()
for name in "${cluster_one[@]}"; do
    cluster_two+=(--skip "$name")
done
lane package nice -n 19 cargo test --test package "$@"
if [ "${#test_args[@]}" -gt 1 ]; then
    # Arguments for the test binaries (a filter, say): one cluster lane, so no test runs twice
    # at once under the same node names.
    lane cluster cargo test --test cluster "$@"
else
    lane cluster-1 cargo test --test cluster "${cargo_args[@]}" -- "${cluster_one[@]}"
    lane cluster-2 cargo test --test cluster "${cargo_args[@]}" -- "${cluster_two[@]}"
fi
alone=(reliability_soak reliability_scale reliability_fd_limit)
others=(--lib --bins --examples --benches)
for file in tests/*.rs; do
    name=$(basename "$file" .rs)
    case " package cluster ${alone[*]} " in
    *" $name "*) ;;
    *) others+=(--test "$name") ;;
    esac
done
# --no-fail-fast: every target runs, so one run reports every failure, not the first.
log "lane others: cargo test --no-fail-fast ${others[*]}"
failed=()
cargo test --no-fail-fast "${others[@]}" "$@" || failed+=(others)
# Every lane, and the static build started before the test build.
wait
if [ "$(cat "$prebuild_out/rc" 2>/dev/null || echo 1)" -ne 0 ]; then
    # Not a failure by itself: tests/package.rs built it again and reports as a test would.
    log "the static build started beside the test build failed:"
    tail -n 20 "$prebuild_out/log"
fi
rm -rf "$prebuild_out"
for name in "${lanes[@]}"; do
    log "lane $name:"
    cat "$lane_dir/$name.log"
    [ "$(cat "$lane_dir/$name.rc" 2>/dev/null || echo 1)" -eq 0 ] || failed+=("$name")
done
rm -rf "$lane_dir"
alone_args=()
for name in "${alone[@]}"; do
    alone_args+=(--test "$name")
done
log "alone: cargo test --no-fail-fast ${alone_args[*]}"
cargo test --no-fail-fast "${alone_args[@]}" "$@" || failed+=(alone)
if [ "${#failed[@]}" -ne 0 ]; then
    log "FAILED: cargo test (${failed[*]})"
    exit 1
fi

# A smoke of the benchmark harness (benches/peers/), so its code cannot rot unnoticed: one
# short round of one workload (latency) through no proxy, warren (the debug build above),
# HAProxy and NGINX; about 10 s once built. It needs root (the proxies run as nobody) and
# fails on any error the run reports. The numbers mean nothing here.
if [ "$(id -u)" -ne 0 ]; then
    log "not root: skipping the benchmark smoke (benches/peers/ runs the proxies as nobody)"
    exit 0
fi
smoke_out=$(mktemp)
trap 'rm -f "$smoke_out" "$smoke_out.demo"' EXIT
log "benchmark smoke: cargo test --bench peers -- --run --quick --rounds 1 --workloads latency"
timeout 120 cargo test --bench peers -- --run --quick --rounds 1 --workloads latency \
    --warren target/debug/warren --out "$smoke_out"
if grep -q "Errors during the run" "$smoke_out"; then
    cat "$smoke_out"
    log "FAILED: the benchmark smoke reported errors"
    exit 1
fi
log "benchmark smoke passed"

# The README's demo, end to end, on the test build: a two-node cluster, warren, a client with
# confirms through a drain and an undrain (about 2 minutes). A failed run keeps its logs and
# says where (scripts/demo.sh).
log "demo: WARREN_DEMO_PROFILE=dev bash scripts/demo.sh"
demo_dir=$(mktemp -d /tmp/warren-demo-ci.XXXXXX)
if ! WARREN_DEMO_PROFILE=dev WARREN_DEMO_DIR="$demo_dir" timeout 600 bash scripts/demo.sh >"$smoke_out.demo" 2>&1; then
    tail -n 60 "$smoke_out.demo"
    log "FAILED: scripts/demo.sh"
    exit 1
fi
tail -n 1 "$smoke_out.demo"
rm -f "$smoke_out.demo"
log "demo passed"
