//! warren under a real systemd (issue 16): a systemd booted for the test in its own namespaces
//! (tests/common/systemd_box.rs; root only, skipped with a SKIP line where the machine cannot
//! build the box) gets warren installed as systemd/README.md says (the `warren` user, the
//! config, the units, the switch and the failover hook), then `systemctl enable --now`
//! warren.service must leave it active, running as `warren`, serving; `systemctl reload`
//! applies a new config (a second listener proxies) and a bad one changes nothing; and the
//! failover path works end to end: the primary backend down makes warren's failover hook, as
//! `warren`, write its request, warren-switch@.path sees it and warren-switch@.service starts the
//! passive unit as root; the primary back stops it. tests/systemd.rs plays systemd instead.
#![cfg(target_os = "linux")]

mod common;

use std::path::Path;
use std::time::Duration;

use common::systemd_box::SystemdBox;

const SECOND: Duration = Duration::from_secs(1);
/// The unit warren's failover hook asks to start and stop.
const PASSIVE: &str = "warren-test-passive.service";

/// The config: `amqp` (and with `second`, `amqp2` on 5674) → a primary on 5673 and a backup on
/// 5683, probed every 300 ms, with the failover hook. Fixed ports: the box has its own network.
fn config(second: bool) -> String {
    let amqp2 =
        "[[listener]]\nname = \"amqp2\"\nlisten = \"127.0.0.1:5674\"\npool = \"rabbitmq\"\n";
    format!(
        r#"[admin]
listen = "127.0.0.1:9901"
state_file = "/var/lib/warren/state.json"

[[listener]]
name = "amqp"
listen = "127.0.0.1:5672"
pool = "rabbitmq"
{}
[pool.rabbitmq.health]
kind = "tcp"
interval = "300ms"
timeout = "300ms"
rise = 1
fall = 1

[[pool.rabbitmq.backend]]
name = "primary"
addr = "127.0.0.1:5673"

[[pool.rabbitmq.backend]]
name = "standby"
addr = "127.0.0.1:5683"
backup = true

[[hook]]
on = ["pool_failover", "pool_failback"]
exec = ["/etc/warren/hooks/failover.sh", "{PASSIVE}"]
timeout = "10s"
"#,
        if second { amqp2 } else { "" }
    )
}

/// Units of the test's own: an echo backend per port (systemd accepts, `cat` echoes), and the
/// passive unit the hook switches.
fn test_units() -> Vec<(String, String)> {
    let mut units = Vec::new();
    for port in [5673, 5683] {
        let socket = format!("[Socket]\nListenStream=127.0.0.1:{port}\nAccept=yes\n");
        units.push((format!("warren-test-echo-{port}.socket"), socket));
        let echo = "[Service]\nExecStart=/bin/cat\nStandardInput=socket\n".to_string();
        units.push((format!("warren-test-echo-{port}@.service"), echo));
    }
    let passive = "[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/bin/true\n";
    units.push((PASSIVE.to_string(), passive.to_string()));
    units
}

/// Hands the repository's units, switch and hook, the config and the test units into the box.
fn hand_in(dir: &Path) {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    for name in [
        "warren.service",
        "warren.socket",
        "warren-switch@.path",
        "warren-switch@.service",
        "warren-switch",
    ] {
        std::fs::copy(repo.join("systemd").join(name), dir.join(name)).unwrap();
    }
    std::fs::copy(
        repo.join("config/hooks/failover.sh"),
        dir.join("failover.sh"),
    )
    .unwrap();
    std::fs::write(dir.join("warren.toml"), config(false)).unwrap();
    std::fs::write(dir.join("warren2.toml"), config(true)).unwrap();
    std::fs::write(dir.join("bad.toml"), "[[listener]]\nname = \"amqp\"\n").unwrap();
    std::fs::create_dir_all(dir.join("units")).unwrap();
    for (name, text) in test_units() {
        std::fs::write(dir.join("units").join(name), text).unwrap();
    }
}

/// systemd/README.md's install steps (the binary is already at /usr/local/bin/warren).
const INSTALL: &str = "cd /run/warren-test
useradd --system --user-group --home-dir /var/lib/warren --shell /usr/sbin/nologin warren
install -d -m 0755 /etc/warren
install -m 0640 -g warren warren.toml /etc/warren/warren.toml
/usr/local/bin/warren check --config /etc/warren/warren.toml
install -m 0644 warren.service warren.socket /etc/systemd/system/
install -m 0644 warren-switch@.path warren-switch@.service /etc/systemd/system/
install -D -m 0755 warren-switch /usr/local/lib/warren/warren-switch
install -D -m 0755 failover.sh /etc/warren/hooks/failover.sh
install -m 0644 units/* /etc/systemd/system/
systemctl daemon-reload";

#[test]
fn warren_service_reloads_and_its_failover_hook_switches_a_unit_as_root() {
    const TEST: &str = "warren_service_reloads_and_its_failover_hook_switches_a_unit_as_root";
    let Some(systemd) = SystemdBox::boot(TEST) else {
        return;
    };
    hand_in(&systemd.dir.0);
    systemd.ok(INSTALL);
    let show = |property: &str| systemd.ok(&format!("systemctl show -p {property} --value warren"));

    // Only the backup listens: once warren starts, the primary's first probe fails over.
    systemd.ok("systemctl start warren-test-echo-5683.socket");
    systemd.ok(&format!(
        "systemctl enable --now warren-switch@{PASSIVE}.path"
    ));
    systemd.ok("systemctl enable --now warren.service");
    assert_eq!(systemd.ok("systemctl is-active warren.service"), "active");
    assert_eq!(show("StatusText"), "serving: amqp on 127.0.0.1:5672");
    let pid = show("MainPID");
    assert_eq!(systemd.ok(&format!("ps -o user= -p {pid}")), "warren");

    // Failover: the hook (as warren) asks, the path unit sees it, the switch (as root) starts.
    systemd.wait_until(
        &format!("systemctl is-active {PASSIVE}"),
        "active",
        20 * SECOND,
    );
    let request = format!("/var/lib/warren/switch/{PASSIVE}");
    assert_eq!(systemd.ok(&format!("cat {request}")), "start");
    assert_eq!(systemd.ok(&format!("stat -c %U {request}")), "warren");
    let switch_log = format!(
        "journalctl --no-pager -o cat _SYSTEMD_UNIT=warren-switch@{PASSIVE}.service _UID=0"
    );
    systemd.wait_until(
        &format!("{switch_log} | grep -c '^warren-switch: start {PASSIVE}$' || true"),
        "1",
        10 * SECOND,
    );

    // Failback: the primary listens again; the passive unit is stopped the same way.
    systemd.ok("systemctl start warren-test-echo-5673.socket");
    systemd.wait_until(
        &format!("systemctl is-active {PASSIVE} || true"),
        "inactive",
        20 * SECOND,
    );
    assert_eq!(systemd.ok(&format!("cat {request}")), "stop");
    systemd.wait_until(
        &format!("{switch_log} | grep -c '^warren-switch: stop {PASSIVE}$' || true"),
        "1",
        10 * SECOND,
    );

    // Reload: a second listener; it proxies to the primary's echo.
    systemd.ok("install -m 0640 -g warren /run/warren-test/warren2.toml /etc/warren/warren.toml");
    systemd.ok("systemctl reload warren");
    systemd.wait_until(
        "systemctl show -p StatusText --value warren",
        "serving: amqp on 127.0.0.1:5672, amqp2 on 127.0.0.1:5674",
        10 * SECOND,
    );
    let echo = "exec 3<>/dev/tcp/127.0.0.1/5674; echo through-amqp2 >&3; timeout 5 head -n 1 <&3";
    assert_eq!(systemd.ok(&format!("bash -c '{echo}'")), "through-amqp2");
    assert_eq!(show("MainPID"), pid, "a reload keeps the process");

    // A bad config: reload refuses it, the service serves on with the old one.
    systemd.ok("install -m 0640 -g warren /run/warren-test/bad.toml /etc/warren/warren.toml");
    systemd.ok("systemctl reload warren");
    let failed =
        "systemctl show -p StatusText --value warren | grep -c 'last reload failed' || true";
    systemd.wait_until(failed, "1", 10 * SECOND);
    assert_eq!(systemd.ok("systemctl is-active warren.service"), "active");
    assert_eq!(systemd.ok(&format!("bash -c '{echo}'")), "through-amqp2");

    systemd.ok("systemctl stop warren.service");
    assert_eq!(show("Result"), "success");
    assert_eq!(
        systemd
            .run("systemctl is-active warren.service")
            .status
            .code(),
        Some(3)
    );
}

/// Criterion (issue 18): under the repository's own warren.service (`Type=notify`, the default
/// `NotifyAccess=main`), `warren upgrade` while a client holds a connection through warren and
/// talks on it every 100 ms: the command exits 0, systemd's MainPID becomes the new process
/// (the old one said `MAINPID=`), the service stays active with 0 restarts, the old process is
/// gone, and the client's 60 round trips all come back on the one connection. Then `systemctl
/// reload` reaches the new process and `systemctl stop` ends it with result `success`: systemd
/// (252 here) waits for it as its own child, not SIGKILLs it as a process it cannot watch.
#[test]
fn warren_upgrade_under_systemd_moves_the_main_pid_and_keeps_a_connection() {
    const TEST: &str = "warren_upgrade_under_systemd_moves_the_main_pid_and_keeps_a_connection";
    let Some(systemd) = SystemdBox::boot(TEST) else {
        return;
    };
    hand_in(&systemd.dir.0);
    systemd.ok(INSTALL);
    let show = |property: &str| systemd.ok(&format!("systemctl show -p {property} --value warren"));
    systemd.ok("systemctl start warren-test-echo-5673.socket");
    systemd.ok("systemctl enable --now warren.service");
    let old_pid = show("MainPID");

    // One connection for the whole test: 60 round trips, 100 ms apart, each line logged.
    let client = "exec 3<>/dev/tcp/127.0.0.1/5672; for i in $(seq 1 60); do \
                  echo ping-$i >&3; read -t 5 line <&3 || exit 1; echo $line >> /run/client.log; \
                  sleep 0.1; done";
    systemd.ok(&format!(
        "systemd-run --unit=warren-test-client --property=Type=exec bash -c '{client}'"
    ));
    let talked =
        "test \"$(cat /run/client.log 2>/dev/null | wc -l)\" -ge 10 && echo yes || echo no";
    systemd.wait_until(talked, "yes", 10 * SECOND);

    let upgraded = systemd.ok("/usr/local/bin/warren upgrade --admin http://127.0.0.1:9901");
    assert!(
        upgraded.starts_with("upgraded: pid ") && upgraded.contains("1 connections handed over"),
        "{upgraded}"
    );
    let new_pid = upgraded.split_whitespace().nth(2).unwrap().to_owned();
    assert_ne!(new_pid, old_pid);
    systemd.wait_until(
        "systemctl show -p MainPID --value warren",
        &new_pid,
        10 * SECOND,
    );
    assert_eq!(systemd.ok("systemctl is-active warren.service"), "active");
    assert_eq!(show("NRestarts"), "0");
    systemd.wait_until(
        &format!("test -e /proc/{old_pid} && echo running || echo gone"),
        "gone",
        20 * SECOND,
    );
    assert_eq!(systemd.ok(&format!("ps -o user= -p {new_pid}")), "warren");

    // The client finishes on its one connection, every answer in order.
    systemd.wait_until(
        "systemctl show -p ActiveState --value warren-test-client",
        "inactive",
        30 * SECOND,
    );
    assert_eq!(
        systemd.ok("systemctl show -p Result --value warren-test-client"),
        "success"
    );
    let expected: Vec<String> = (1..=60).map(|i| format!("ping-{i}")).collect();
    assert_eq!(systemd.ok("cat /run/client.log"), expected.join("\n"));

    // The new main process takes reloads and stops as the unit says.
    systemd.ok("install -m 0640 -g warren /run/warren-test/warren2.toml /etc/warren/warren.toml");
    systemd.ok("systemctl reload warren");
    systemd.wait_until(
        "systemctl show -p StatusText --value warren",
        "serving: amqp on 127.0.0.1:5672, amqp2 on 127.0.0.1:5674",
        10 * SECOND,
    );
    assert_eq!(show("MainPID"), new_pid);
    systemd.ok("systemctl stop warren.service");
    assert_eq!(show("Result"), "success");
}
