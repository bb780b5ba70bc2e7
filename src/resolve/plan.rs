//! The pure part of re-resolution: which names a config asks to look up again, and what a
//! lookup's answer changes in the config (a backend's address; an expanded backend's members,
//! each keeping its `NAME-N` while its address stays). No I/O, no clock.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use crate::config::{expanded_backend, expanded_name, BackendConfig, Config};

/// One name a pool looks up again: a backend given by host name, or a backend with `expand`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    pub pool: String,
    /// The backend's name as written (for `expand`, the name its members are numbered from).
    pub backend: String,
    /// The host name as written.
    pub host: String,
    pub port: u16,
    pub expand: bool,
}

/// What an answer changed, for the log and the counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A backend's address.
    Moved {
        backend: String,
        from: SocketAddr,
        to: SocketAddr,
    },
    /// A new address of an expanded backend became a backend.
    Added { backend: String, addr: SocketAddr },
    /// An address of an expanded backend went away, and its backend with it.
    Removed { backend: String, addr: SocketAddr },
}

/// The names `config` looks up again, each with its pool's `resolve_interval`, in config order.
pub fn targets(config: &Config) -> Vec<(Target, Duration)> {
    let mut out: Vec<(Target, Duration)> = Vec::new();
    for pool in &config.pools {
        let Some(interval) = pool.resolve_interval else {
            continue;
        };
        for b in &pool.backends {
            let Some(host) = &b.dns_name else { continue };
            let target = Target {
                pool: pool.name.clone(),
                backend: b.expanded_from.clone().unwrap_or_else(|| b.name.clone()),
                host: host.clone(),
                port: b.port,
                expand: b.expanded_from.is_some(),
            };
            if !out.iter().any(|(t, _)| *t == target) {
                out.push((target, interval));
            }
        }
    }
    out
}

/// `interval` shortened by up to a tenth, `r` in `0.0..1.0` choosing how much, so the lookups
/// of many backends (and many instances of warren) spread out.
pub fn jittered(interval: Duration, r: f64) -> Duration {
    interval.mul_f64(1.0 - r.clamp(0.0, 1.0) * 0.1)
}

/// The config after `target`'s name answered `addrs` (never empty), with what changed; `None`
/// when nothing did (or the target is gone from `config`, as after a reload).
pub fn apply(
    config: &Config,
    target: &Target,
    addrs: &[SocketAddr],
) -> Option<(Config, Vec<Change>)> {
    let pool = config.pools.iter().position(|p| p.name == target.pool)?;
    let mut new = config.clone();
    let backends = &mut new.pools[pool].backends;
    let changes = if target.expand {
        apply_expanded(backends, target, addrs)?
    } else {
        let b = backends.iter_mut().find(|b| {
            b.name == target.backend
                && b.expanded_from.is_none()
                && b.dns_name.as_deref() == Some(&target.host)
        })?;
        // Still one of the answers: it stays (a name with several addresses does not flap).
        if addrs.contains(&b.addr) {
            return None;
        }
        let (from, to) = (b.addr, *addrs.first()?);
        b.addr = to;
        vec![Change::Moved {
            backend: b.name.clone(),
            from,
            to,
        }]
    };
    Some((new, changes))
}

/// An expanded backend's members after its name answered `addrs`: kept in place of the old
/// ones, numbered by [`assign_slots`].
fn apply_expanded(
    backends: &mut Vec<BackendConfig>,
    target: &Target,
    addrs: &[SocketAddr],
) -> Option<Vec<Change>> {
    let is_member = |b: &BackendConfig| {
        b.expanded_from.as_deref() == Some(&target.backend)
            && b.dns_name.as_deref() == Some(&target.host)
    };
    let at = backends.iter().position(is_member)?;
    let template = backends[at].clone();
    let current: Vec<(String, SocketAddr)> = backends
        .iter()
        .filter(|b| is_member(b))
        .map(|b| (b.name.clone(), b.addr))
        .collect();
    let others: HashSet<String> = backends
        .iter()
        .filter(|b| !is_member(b))
        .map(|b| b.name.clone())
        .collect();
    let next = assign_slots(&target.backend, &current, &others, addrs);
    let mut changes: Vec<Change> = current
        .iter()
        .filter(|c| !next.contains(c))
        .map(|(backend, addr)| Change::Removed {
            backend: backend.clone(),
            addr: *addr,
        })
        .collect();
    changes.extend(
        next.iter()
            .filter(|n| !current.contains(n))
            .map(|(backend, addr)| Change::Added {
                backend: backend.clone(),
                addr: *addr,
            }),
    );
    if changes.is_empty() {
        return None;
    }
    let members: Vec<BackendConfig> = next
        .iter()
        .map(
            |(name, addr)| match backends.iter().find(|b| b.name == *name) {
                Some(kept) if is_member(kept) => kept.clone(),
                _ => BackendConfig {
                    name: name.clone(),
                    ..expanded_backend(&template, &target.host, 0, *addr)
                },
            },
        )
        .collect();
    backends.retain(|b| !is_member(b));
    backends.splice(at..at, members);
    Some(changes)
}

/// The members of the backend written as `written` for the addresses `addrs`: an address
/// already a member keeps its name; a new one takes the lowest `written-N` that is neither
/// another backend's (`others`) nor a current member's, so a name never passes from one
/// address to another within one change (a drained or down verdict must not land on a new
/// machine). Sorted by number.
pub fn assign_slots(
    written: &str,
    current: &[(String, SocketAddr)],
    others: &HashSet<String>,
    addrs: &[SocketAddr],
) -> Vec<(String, SocketAddr)> {
    let mut wanted = addrs.to_vec();
    wanted.sort_unstable();
    wanted.dedup();
    let mut out: Vec<(String, SocketAddr)> = current
        .iter()
        .filter(|(_, addr)| wanted.contains(addr))
        .cloned()
        .collect();
    let mut used: HashSet<String> = others.clone();
    used.extend(current.iter().map(|(name, _)| name.clone()));
    let mut slot = 1;
    for addr in wanted {
        if out.iter().any(|(_, a)| *a == addr) {
            continue;
        }
        while used.contains(&expanded_name(written, slot)) {
            slot += 1;
        }
        let name = expanded_name(written, slot);
        used.insert(name.clone());
        out.push((name, addr));
    }
    out.sort_by_key(|(name, _)| slot_of(written, name));
    out
}

/// `N` of `written-N` (`usize::MAX` for a name not of that shape, last).
fn slot_of(written: &str, name: &str) -> usize {
    name.strip_prefix(written)
        .and_then(|rest| rest.strip_prefix('-'))
        .and_then(|n| n.parse().ok())
        .unwrap_or(usize::MAX)
}

/// A reloaded config whose expanded backends keep the names the running one gave their
/// addresses (a reload numbers them afresh, by sorted address): the same address, the same
/// backend, its state and counters with it.
pub fn carry_slots(old: &Config, mut new: Config) -> Config {
    for pool in &mut new.pools {
        let Some(old_pool) = old.pool(&pool.name) else {
            continue;
        };
        let groups: Vec<(String, String)> = pool
            .backends
            .iter()
            .filter_map(|b| Some((b.expanded_from.clone()?, b.dns_name.clone()?)))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        for (written, host) in groups {
            let member = |b: &BackendConfig| {
                b.expanded_from.as_deref() == Some(&written) && b.dns_name.as_deref() == Some(&host)
            };
            let current: Vec<(String, SocketAddr)> = old_pool
                .backends
                .iter()
                .filter(|b| member(b))
                .map(|b| (b.name.clone(), b.addr))
                .collect();
            let others: HashSet<String> = pool
                .backends
                .iter()
                .filter(|b| !member(b))
                .map(|b| b.name.clone())
                .collect();
            let addrs: Vec<SocketAddr> = pool
                .backends
                .iter()
                .filter(|b| member(b))
                .map(|b| b.addr)
                .collect();
            // The leaving members' names are free again: nothing runs on them across a reload
            // that the new config would not also drop.
            let kept: Vec<(String, SocketAddr)> = current
                .into_iter()
                .filter(|(_, a)| addrs.contains(a))
                .collect();
            for (name, addr) in assign_slots(&written, &kept, &others, &addrs) {
                if let Some(b) = pool
                    .backends
                    .iter_mut()
                    .find(|b| member(b) && b.addr == addr)
                {
                    b.name = name;
                }
            }
        }
    }
    new
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn named(list: &[(&str, &str)]) -> Vec<(String, SocketAddr)> {
        list.iter().map(|(n, a)| (n.to_string(), addr(a))).collect()
    }

    /// A pool "p" (resolve_interval 5s) with backend "fixed" at an IP, "moving" by name at
    /// 10.0.0.1, and "node" expanded from "rabbit.headless" to `members`.
    fn config(members: &[(&str, &str)]) -> Config {
        let text = "[[listener]]\nname = \"l\"\nlisten = \"127.0.0.1:5672\"\npool = \"p\"\n\
                    [pool.p]\nresolve_interval = \"5s\"\n\
                    [[pool.p.backend]]\nname = \"fixed\"\naddr = \"10.9.9.9:5672\"\n\
                    [[pool.p.backend]]\nname = \"moving\"\naddr = \"10.0.0.1:5672\"\n";
        let mut config =
            crate::config::from_toml_offline(text, std::path::Path::new("t.toml")).unwrap();
        let pool = &mut config.pools[0];
        pool.backends[1].dns_name = Some("moving.internal".into());
        let template = BackendConfig {
            name: "node".into(),
            ..pool.backends[0].clone()
        };
        for (name, a) in members {
            pool.backends.push(BackendConfig {
                name: name.to_string(),
                ..expanded_backend(&template, "rabbit.headless", 0, addr(a))
            });
        }
        config
    }

    fn members(config: &Config) -> Vec<(String, SocketAddr)> {
        config.pools[0]
            .backends
            .iter()
            .filter(|b| b.expanded_from.is_some())
            .map(|b| (b.name.clone(), b.addr))
            .collect()
    }

    fn target(backend: &str, host: &str, expand: bool) -> Target {
        Target {
            pool: "p".into(),
            backend: backend.into(),
            host: host.into(),
            port: 5672,
            expand,
        }
    }

    /// (current members, other backends' names, answer, members after)
    type Case<'a> = (
        Vec<(&'a str, &'a str)>,
        &'a HashSet<String>,
        Vec<&'a str>,
        Vec<(&'a str, &'a str)>,
    );

    #[test]
    fn slots_stay_with_their_address_and_new_ones_take_the_lowest_free() {
        let none = HashSet::new();
        let taken: HashSet<String> = ["n-1".to_string()].into();
        let cases: Vec<Case> = vec![
            // At load: sorted addresses, numbered from 1.
            (
                vec![],
                &none,
                vec!["10.0.0.3:1", "10.0.0.1:1", "10.0.0.2:1"],
                vec![
                    ("n-1", "10.0.0.1:1"),
                    ("n-2", "10.0.0.2:1"),
                    ("n-3", "10.0.0.3:1"),
                ],
            ),
            // One more: the others keep their names.
            (
                vec![("n-1", "10.0.0.5:1"), ("n-2", "10.0.0.9:1")],
                &none,
                vec!["10.0.0.9:1", "10.0.0.5:1", "10.0.0.1:1"],
                vec![
                    ("n-1", "10.0.0.5:1"),
                    ("n-2", "10.0.0.9:1"),
                    ("n-3", "10.0.0.1:1"),
                ],
            ),
            // One gone: a gap, no renumbering.
            (
                vec![
                    ("n-1", "10.0.0.1:1"),
                    ("n-2", "10.0.0.2:1"),
                    ("n-3", "10.0.0.3:1"),
                ],
                &none,
                vec!["10.0.0.1:1", "10.0.0.3:1"],
                vec![("n-1", "10.0.0.1:1"), ("n-3", "10.0.0.3:1")],
            ),
            // Replaced in one step: the new machine does not inherit the leaving one's name.
            (
                vec![("n-1", "10.0.0.1:1"), ("n-2", "10.0.0.2:1")],
                &none,
                vec!["10.0.0.1:1", "10.0.0.7:1"],
                vec![("n-1", "10.0.0.1:1"), ("n-3", "10.0.0.7:1")],
            ),
            // ...but a gap left earlier is filled.
            (
                vec![("n-1", "10.0.0.1:1"), ("n-3", "10.0.0.3:1")],
                &none,
                vec!["10.0.0.1:1", "10.0.0.3:1", "10.0.0.8:1"],
                vec![
                    ("n-1", "10.0.0.1:1"),
                    ("n-2", "10.0.0.8:1"),
                    ("n-3", "10.0.0.3:1"),
                ],
            ),
            // Another backend's name is skipped; duplicates in the answer count once.
            (
                vec![],
                &taken,
                vec!["10.0.0.1:1", "10.0.0.1:1"],
                vec![("n-2", "10.0.0.1:1")],
            ),
        ];
        for (current, others, answer, want) in cases {
            let answer: Vec<SocketAddr> = answer.iter().map(|a| addr(a)).collect();
            assert_eq!(
                assign_slots("n", &named(&current), others, &answer),
                named(&want),
                "{current:?} + {answer:?}"
            );
        }
        assert_eq!(slot_of("n", "n-12"), 12);
        assert_eq!(slot_of("n", "nx-1"), usize::MAX);
    }

    #[test]
    fn targets_are_the_names_of_pools_with_an_interval() {
        let config = config(&[("node-1", "10.2.0.1:5672"), ("node-2", "10.2.0.2:5672")]);
        let found: Vec<(Target, Duration)> = targets(&config);
        assert_eq!(
            found,
            [
                (
                    target("moving", "moving.internal", false),
                    Duration::from_secs(5)
                ),
                (
                    target("node", "rabbit.headless", true),
                    Duration::from_secs(5)
                ),
            ]
        );
        let mut off = config.clone();
        off.pools[0].resolve_interval = None;
        assert!(targets(&off).is_empty());
    }

    #[test]
    fn a_moved_name_changes_its_backend_and_a_kept_address_changes_nothing() {
        let config = config(&[]);
        let t = target("moving", "moving.internal", false);
        assert!(apply(&config, &t, &[addr("10.0.0.2:5672"), addr("10.0.0.1:5672")]).is_none());
        let (new, changes) = apply(&config, &t, &[addr("10.0.0.2:5672")]).unwrap();
        assert_eq!(new.pools[0].backends[1].addr, addr("10.0.0.2:5672"));
        assert_eq!(
            changes,
            [Change::Moved {
                backend: "moving".into(),
                from: addr("10.0.0.1:5672"),
                to: addr("10.0.0.2:5672")
            }]
        );
        // A target a reload took away changes nothing.
        assert!(apply(&config, &target("gone", "x", false), &[addr("10.0.0.3:1")]).is_none());
    }

    #[test]
    fn an_expanded_name_gains_and_loses_backends_in_place() {
        let two = config(&[("node-1", "10.2.0.1:5672"), ("node-2", "10.2.0.2:5672")]);
        let t = target("node", "rabbit.headless", true);
        let three = [
            addr("10.2.0.2:5672"),
            addr("10.2.0.1:5672"),
            addr("10.2.0.3:5672"),
        ];
        assert!(apply(&two, &t, &three[..2]).is_none());
        let (grown, changes) = apply(&two, &t, &three).unwrap();
        assert_eq!(
            members(&grown),
            named(&[
                ("node-1", "10.2.0.1:5672"),
                ("node-2", "10.2.0.2:5672"),
                ("node-3", "10.2.0.3:5672")
            ])
        );
        assert_eq!(
            changes,
            [Change::Added {
                backend: "node-3".into(),
                addr: addr("10.2.0.3:5672")
            }]
        );
        let b = &grown.pools[0].backends[4];
        assert_eq!(
            (b.host.as_str(), b.dns_name.as_deref()),
            ("10.2.0.3", Some("rabbit.headless"))
        );
        let (shrunk, changes) = apply(&grown, &t, &three[1..]).unwrap();
        assert_eq!(
            members(&shrunk),
            named(&[("node-1", "10.2.0.1:5672"), ("node-3", "10.2.0.3:5672")])
        );
        assert_eq!(
            changes,
            [Change::Removed {
                backend: "node-2".into(),
                addr: addr("10.2.0.2:5672")
            }]
        );
        // The backends around the group stay where they were.
        assert_eq!(shrunk.pools[0].backends[0].name, "fixed");
    }

    #[test]
    fn a_reload_keeps_the_names_the_running_config_gave() {
        let running = config(&[("node-1", "10.2.0.3:5672"), ("node-3", "10.2.0.1:5672")]);
        // A reload numbers by sorted address: 10.2.0.1 would become node-1.
        let reloaded = config(&[
            ("node-1", "10.2.0.1:5672"),
            ("node-2", "10.2.0.2:5672"),
            ("node-3", "10.2.0.3:5672"),
        ]);
        let carried = carry_slots(&running, reloaded);
        let mut got = members(&carried);
        got.sort();
        assert_eq!(
            got,
            named(&[
                ("node-1", "10.2.0.3:5672"),
                ("node-2", "10.2.0.2:5672"),
                ("node-3", "10.2.0.1:5672")
            ])
        );
    }

    #[test]
    fn jitter_shortens_by_at_most_a_tenth() {
        let i = Duration::from_secs(30);
        assert_eq!(jittered(i, 0.0), i);
        assert_eq!(jittered(i, 1.0), Duration::from_secs(27));
        assert!(jittered(i, 0.5) < i);
    }
}
