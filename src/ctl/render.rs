//! `warren ctl status` as text: listeners, then per pool an aligned table. Pure: the clock and
//! the terminal width are parameters.

use super::*;

/// `, imbalance 50% (rebalancing)`; nothing for a balanced pool that no pass is moving.
fn balance_note(r: &RebalanceStatus) -> String {
    let what = match r.state {
        RebalanceState::Balanced => return String::new(),
        RebalanceState::Running => "rebalancing",
        RebalanceState::Held => "rebalance held",
        RebalanceState::Unbalanced if r.mode == "off" => "rebalance: warren ctl rebalance",
        RebalanceState::Unbalanced => "not rebalancing",
    };
    format!(", imbalance {:.0}% ({what})", r.imbalance * 100.0)
}

/// The text of `warren ctl status`: listeners, then per pool a header and an aligned table.
pub(super) fn render_status(status: &Status, now: SystemTime, width: usize) -> String {
    let mut text = String::new();
    for l in &status.listeners {
        let _ = writeln!(
            text,
            "listener {} on {} -> pool {}: {}",
            l.name,
            l.listen,
            l.pool,
            connections(l.active_connections)
        );
        for route in &l.sni {
            let _ = writeln!(text, "  sni {} -> pool {}", route.server_name, route.pool);
        }
    }
    for pool in &status.pools {
        if !text.is_empty() {
            text.push('\n');
        }
        let _ = write!(
            text,
            "pool {} ({}): {}/{} available, min_available {}",
            pool.name, pool.balance, pool.available, pool.total, pool.min_available
        );
        if let Some(slow_start) = &pool.slow_start {
            let _ = write!(text, ", slow_start {slow_start}");
        }
        if let Some(on_down) = &pool.on_down {
            let _ = write!(text, ", on_down {on_down}");
        }
        if let Some(rebalance) = &pool.rebalance {
            text.push_str(&balance_note(rebalance));
        }
        text.push('\n');
        if pool.backends.is_empty() {
            text.push_str("  (no backends)\n");
            continue;
        }
        let mut rows = vec![[
            "NAME".to_string(),
            "ADDR".to_string(),
            "HEALTH".to_string(),
            "ADMIN".to_string(),
            "CONNS".to_string(),
            "LAST PROBE".to_string(),
        ]];
        for b in &pool.backends {
            let name = if b.backup {
                format!("{} (backup)", b.name)
            } else {
                b.name.clone()
            };
            rows.push([
                name,
                b.addr.clone(),
                health_cell(b, now),
                admin_cell(b, now),
                match b.connecting {
                    0 => b.active_connections.to_string(),
                    n => format!("{} (+{n} connecting)", b.active_connections),
                },
                probe_cell(b.last_probe.as_ref(), now),
            ]);
        }
        text.push_str(&render_table(&rows, width));
    }
    text
}

/// Left-aligned columns two spaces apart, indented under the pool; the last column is cut
/// with `…` so that a row fits `width` (it keeps at least [`MIN_PROBE_WIDTH`] characters).
pub(super) fn render_table<const N: usize>(rows: &[[String; N]], width: usize) -> String {
    const INDENT: &str = "  ";
    const GAP: usize = 2;
    let mut widths = vec![0usize; N - 1];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row.iter()) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let used = INDENT.len() + widths.iter().map(|w| w + GAP).sum::<usize>();
    let last_width = width.saturating_sub(used).max(MIN_PROBE_WIDTH);
    let mut text = String::new();
    for row in rows {
        text.push_str(INDENT);
        for (cell, w) in row.iter().zip(&widths) {
            let pad = w + GAP - cell.chars().count();
            text.push_str(cell);
            text.extend(std::iter::repeat(' ').take(pad));
        }
        text.push_str(&cut(&row[N - 1], last_width));
        text.push('\n');
    }
    text
}

pub(super) fn cut(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_string();
    }
    let mut cut: String = text.chars().take(width.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// `down for 3m12s`: the health and how long it has been so (`unknown` alone before the first
/// change, or when the server did not say when).
pub(super) fn health_cell(b: &BackendStatus, now: SystemTime) -> String {
    let since = b
        .health_changed_at
        .as_deref()
        .and_then(|at| humantime::parse_rfc3339_weak(at).ok());
    match since {
        Some(at) if b.health != Health::Unknown || b.health_reason.is_some() => {
            // A server clock slightly ahead of ours reads as "for 0s", not as an error.
            let age = now.duration_since(at).unwrap_or_default();
            format!("{} for {}", b.health, short_duration(age))
        }
        _ => b.health.to_string(),
    }
}

/// The admin state as the operator set it: a drain's time left, slow start, and `(local)`
/// for a change made on this instance only (`--local` with `[fleet]`).
pub(super) fn admin_cell(b: &BackendStatus, now: SystemTime) -> String {
    let cell = admin_state_cell(b, now);
    match b.local_change {
        Some(_) => format!("{cell} (local)"),
        None => cell,
    }
}

fn admin_state_cell(b: &BackendStatus, now: SystemTime) -> String {
    match (&b.drain_deadline, b.admin) {
        (Some(deadline), AdminState::Draining) => match humantime::parse_rfc3339_weak(deadline) {
            Ok(at) => match at.duration_since(now) {
                Ok(left) => format!("draining ({} left)", short_duration(left)),
                Err(_) => "draining (deadline passed)".to_string(),
            },
            Err(_) => format!("draining (until {deadline})"),
        },
        (_, AdminState::Active) => match b.slow_start_percent {
            Some(percent) => format!("active (slow start {percent}%)"),
            None => b.admin.to_string(),
        },
        _ => b.admin.to_string(),
    }
}

/// `up 1.2ms 5s ago: Connection.Start received…`, or `-` before the first probe.
pub(super) fn probe_cell(probe: Option<&ProbeStatus>, now: SystemTime) -> String {
    let Some(p) = probe else {
        return "-".to_string();
    };
    let mut cell = String::from(if p.up { "up" } else { "down" });
    if let Some(ms) = p.duration_ms {
        let _ = write!(cell, " {}", probe_duration(ms));
    }
    if let Some(at) =
        p.at.as_deref()
            .and_then(|a| humantime::parse_rfc3339_weak(a).ok())
    {
        // A server clock slightly ahead of ours reads as "0s ago", not as an error.
        let age = now.duration_since(at).unwrap_or_default();
        let _ = write!(cell, " {} ago", short_duration(age));
    }
    if !p.reason.is_empty() {
        let _ = write!(cell, ": {}", p.reason);
    }
    cell
}

pub(super) fn probe_duration(ms: f64) -> String {
    if !ms.is_finite() || ms < 0.0 {
        "?".to_string()
    } else if ms < 10.0 {
        format!("{ms:.1}ms")
    } else if ms < 1000.0 {
        format!("{ms:.0}ms")
    } else {
        format!("{:.1}s", ms / 1000.0)
    }
}

/// One unit, rounded down: `5s`, `3m`, `2h`, `4d`.
pub(super) fn short_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        3600..=86_399 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// The fleet under `warren ctl status` (with `[fleet]`): the store, every live instance and
/// when it last reported, then each backend's connections across the fleet, per instance, and
/// where the instances disagree.
pub(super) fn render_fleet(fleet: &FleetStatus, now: SystemTime, width: usize) -> String {
    let mut text = format!("fleet as seen by {}: ", fleet.instance);
    if fleet.store != "ok" {
        let _ = writeln!(
            text,
            "etcd {}\n  the drains in force stay; changes need etcd, or --local for this \
             instance only",
            fleet.store
        );
        return text;
    }
    let _ = writeln!(
        text,
        "etcd ok, {} live",
        plural(fleet.instances.len(), "instance")
    );
    let mut rows = vec![[
        "INSTANCE".to_string(),
        "VERSION".to_string(),
        "REPORTED".to_string(),
    ]];
    for i in &fleet.instances {
        let reported = match humantime::parse_rfc3339_weak(&i.reported) {
            // A clock slightly ahead of ours reads as "0s ago", not as an error.
            Ok(at) => format!(
                "{} ago",
                short_duration(now.duration_since(at).unwrap_or_default())
            ),
            Err(_) => i.reported.clone(),
        };
        rows.push([i.instance.clone(), i.version.clone(), reported]);
    }
    text.push_str(&render_table(&rows, width));
    let mut rows = vec![[
        "POOL/BACKEND".to_string(),
        "CONNS".to_string(),
        "PER INSTANCE".to_string(),
    ]];
    for b in &fleet.backends {
        let each: Vec<String> = b
            .instances
            .iter()
            .map(|v| {
                let local = if v.local { ", local" } else { "" };
                match v.admin {
                    AdminState::Active => format!("{} {}{local}", v.instance, v.active_connections),
                    admin => format!("{} {} ({admin}{local})", v.instance, v.active_connections),
                }
            })
            .collect();
        rows.push([
            format!("{}/{}", b.pool, b.backend),
            b.active_connections.to_string(),
            each.join(", "),
        ]);
    }
    text.push_str(&render_table(&rows, width));
    for b in fleet.backends.iter().filter(|b| b.disagreement.is_some()) {
        let why = b.disagreement.as_deref().unwrap_or_default();
        let _ = writeln!(text, "  ! {}/{}: {why}", b.pool, b.backend);
    }
    text
}

/// `1 instance`, `3 instances`.
fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}
