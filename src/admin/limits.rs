//! The admin API's defences against a client it does not trust yet: the wrong-token limiter
//! ([`AuthLimiter`], which decides whether a wrong token is answered at once or held, see
//! [`WrongToken`]) and the bound on open connections ([`ConnectionTable`]). Both group clients
//! by source prefix (see [`crate::source::prefix_of`]) so rotating through addresses of one
//! network gains nothing. Pure: the caller passes `now` and connection ids; no sockets, no
//! tokens (comparing the token is the caller's, in constant time).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ipnet::IpNet;

use crate::source::prefix_of;

/// Wrong tokens one source prefix may send at once before it must wait.
pub const AUTH_FAILURE_BURST: f64 = 10.0;
/// Wrong tokens one source prefix regains per second once its burst is spent.
pub const AUTH_FAILURES_PER_SECOND: f64 = 2.0;
/// Wrong tokens from every source together before all must wait.
pub const AUTH_FAILURE_BURST_TOTAL: f64 = 50.0;
/// Wrong tokens regained per second by every source together.
pub const AUTH_FAILURES_PER_SECOND_TOTAL: f64 = 10.0;
/// IPv4 prefix wrong tokens are counted by (an IPv6 source counts by its /64).
pub const AUTH_V4_PREFIX: u8 = 24;
/// Longest a wrong token over the budget is held before its 429. A guesser's held connections
/// count against `admin.max_connections_per_source` and `admin.max_connections`, so it learns at
/// most that many answers per hold; the budget's debt is capped so that a wrong token is checked
/// again at most this long after the last one.
pub const AUTH_HOLD_MAX: Duration = Duration::from_secs(5);
/// Source prefixes tracked at once; past it, those with a full budget are forgotten.
const AUTH_SOURCES_TRACKED: usize = 4096;

/// A token bucket: attempts left at the time of the last spend.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    left: f64,
    at: Instant,
}

impl Bucket {
    fn left(bucket: Option<&Bucket>, now: Instant, burst: f64, rate: f64) -> f64 {
        match bucket {
            None => burst,
            Some(b) => {
                (b.left + now.saturating_duration_since(b.at).as_secs_f64() * rate).min(burst)
            }
        }
    }

    /// How long until one attempt is back, when none is left (at most [`AUTH_HOLD_MAX`]).
    fn wait(left: f64, rate: f64) -> Option<Duration> {
        (left < 1.0).then(|| Duration::from_secs_f64((1.0 - left) / rate).min(AUTH_HOLD_MAX))
    }

    /// `left` after one more attempt: it may go into debt (each wrong token while waiting pushes
    /// the wait further out), but never so deep that the wait passes [`AUTH_HOLD_MAX`].
    fn spend(left: f64, rate: f64) -> f64 {
        (left - 1.0).max(1.0 - rate * AUTH_HOLD_MAX.as_secs_f64())
    }
}

/// What to do with a wrong token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum WrongToken {
    /// Within the budget: answer 401 now. `last` when it spent its prefix's last attempt.
    Checked { last: bool },
    /// Over the budget: hold the connection for `hold`, then answer 429 with `Retry-After` =
    /// `retry_after` (from the answer; how long until a wrong token is checked again). Answering
    /// at once would tell a guesser "wrong" as fast as it asks, since the right token is always
    /// answered at once.
    Held {
        hold: Duration,
        retry_after: Duration,
    },
}

/// Token buckets of wrong-token attempts per source prefix (IPv4 /24, IPv6 /64) and for all
/// sources together, so guessing is slow (2 a second per prefix after a burst of 10, 10 a second
/// in total after a burst of 50) while a typo costs nothing. A missing token is not a guess and
/// spends nothing. Every wrong token spends, also one over the budget, which is held (see
/// [`WrongToken::Held`]) for as long as the buckets say, up to [`AUTH_HOLD_MAX`]. The limiter
/// only sees wrong tokens: a request carrying the right token is let through whatever the
/// buckets say (see `admin::authenticate`).
#[derive(Default)]
pub struct AuthLimiter {
    inner: Mutex<LimiterState>,
}

#[derive(Default)]
struct LimiterState {
    prefixes: HashMap<IpNet, Bucket>,
    total: Option<Bucket>,
}

impl LimiterState {
    /// Keep the tracked prefixes bounded before `prefix` is added: forget those with a full
    /// budget, and if every one is guessing, the oldest (the total bucket still holds it back).
    fn make_room(&mut self, prefix: IpNet, now: Instant) {
        let prefixes = &mut self.prefixes;
        if prefixes.len() < AUTH_SOURCES_TRACKED || prefixes.contains_key(&prefix) {
            return;
        }
        prefixes.retain(|_, b| {
            Bucket::left(Some(b), now, AUTH_FAILURE_BURST, AUTH_FAILURES_PER_SECOND)
                < AUTH_FAILURE_BURST
        });
        if prefixes.len() >= AUTH_SOURCES_TRACKED {
            if let Some(oldest) = prefixes.iter().min_by_key(|(_, b)| b.at).map(|(p, _)| *p) {
                prefixes.remove(&oldest);
            }
        }
    }
}

impl AuthLimiter {
    /// `Some(wait)` when a wrong token from `source` must not be checked now (its prefix or
    /// every source together has no attempt left): how long until one is back.
    pub fn retry_after(&self, source: IpAddr, now: Instant) -> Option<Duration> {
        let state = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let prefix = prefix_of(source, AUTH_V4_PREFIX);
        let own = Bucket::left(
            state.prefixes.get(&prefix),
            now,
            AUTH_FAILURE_BURST,
            AUTH_FAILURES_PER_SECOND,
        );
        let total = Bucket::left(
            state.total.as_ref(),
            now,
            AUTH_FAILURE_BURST_TOTAL,
            AUTH_FAILURES_PER_SECOND_TOTAL,
        );
        match (
            Bucket::wait(own, AUTH_FAILURES_PER_SECOND),
            Bucket::wait(total, AUTH_FAILURES_PER_SECOND_TOTAL),
        ) {
            (None, None) => None,
            (a, b) => a.max(b),
        }
    }

    /// Decide about a wrong token from `source` at `now`, and spend it from its prefix's
    /// budget and the total.
    pub fn wrong_token(&self, source: IpAddr, now: Instant) -> WrongToken {
        let mut state = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let prefix = prefix_of(source, AUTH_V4_PREFIX);
        state.make_room(prefix, now);
        let own = Bucket::left(
            state.prefixes.get(&prefix),
            now,
            AUTH_FAILURE_BURST,
            AUTH_FAILURES_PER_SECOND,
        );
        let total = Bucket::left(
            state.total.as_ref(),
            now,
            AUTH_FAILURE_BURST_TOTAL,
            AUTH_FAILURES_PER_SECOND_TOTAL,
        );
        let waits = |own: f64, total: f64| {
            Bucket::wait(own, AUTH_FAILURES_PER_SECOND)
                .max(Bucket::wait(total, AUTH_FAILURES_PER_SECOND_TOTAL))
        };
        let hold = waits(own, total);
        let (own, total) = (
            Bucket::spend(own, AUTH_FAILURES_PER_SECOND),
            Bucket::spend(total, AUTH_FAILURES_PER_SECOND_TOTAL),
        );
        state.prefixes.insert(prefix, Bucket { left: own, at: now });
        state.total = Some(Bucket {
            left: total,
            at: now,
        });
        match hold {
            None => WrongToken::Checked { last: own < 1.0 },
            Some(hold) => WrongToken::Held {
                hold,
                retry_after: waits(own, total).unwrap_or_default().saturating_sub(hold),
            },
        }
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.inner.lock().unwrap().prefixes.len()
    }
}

/// IPv4 prefix admin connections are counted by per source (an IPv6 source counts by its /64).
pub const CONNECTION_V4_PREFIX: u8 = 32;

/// What to do with a new admin connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admit {
    /// Serve it; first close the listed connections (the oldest idle ones) to make room.
    Serve { evict: Vec<u64> },
    /// Close it at once: its source already has `max_connections_per_source` open.
    PerSourceLimit,
    /// Close it at once: `max_connections` are open and every one is serving a request.
    TotalLimit,
}

/// The admin connections open now, oldest first, with their source and whether a request is
/// being served on them. Bounds them per source and in total: a new connection over the total
/// closes the oldest idle one, so a flood of idle connections cannot keep `/healthz` out.
pub struct ConnectionTable {
    max_total: usize,
    max_per_source: usize,
    /// By id (ids grow, so the first is the oldest): source prefix, serving a request.
    open: BTreeMap<u64, (IpNet, bool)>,
    per_source: HashMap<IpNet, usize>,
}

impl ConnectionTable {
    /// An empty table with these bounds (each at least 1).
    pub fn new(max_total: usize, max_per_source: usize) -> ConnectionTable {
        ConnectionTable {
            max_total: max_total.max(1),
            max_per_source: max_per_source.max(1),
            open: BTreeMap::new(),
            per_source: HashMap::new(),
        }
    }

    /// Decide about connection `id` (greater than every id before it) from `source`; when
    /// served, it is added and the evicted ones are removed.
    pub fn admit(&mut self, id: u64, source: IpAddr) -> Admit {
        let prefix = prefix_of(source, CONNECTION_V4_PREFIX);
        if self.per_source.get(&prefix).copied().unwrap_or(0) >= self.max_per_source {
            return Admit::PerSourceLimit;
        }
        let over = (self.open.len() + 1).saturating_sub(self.max_total);
        let idle: Vec<u64> = self
            .open
            .iter()
            .filter(|(_, (_, busy))| !busy)
            .map(|(id, _)| *id)
            .take(over)
            .collect();
        if idle.len() < over {
            return Admit::TotalLimit;
        }
        for gone in &idle {
            self.close(*gone);
        }
        self.open.insert(id, (prefix, false));
        *self.per_source.entry(prefix).or_default() += 1;
        Admit::Serve { evict: idle }
    }

    /// Mark whether connection `id` is serving a request (a serving one is never evicted).
    pub fn set_busy(&mut self, id: u64, busy: bool) {
        if let Some((_, b)) = self.open.get_mut(&id) {
            *b = busy;
        }
    }

    /// Forget connection `id` (closed, or evicted).
    pub fn close(&mut self, id: u64) {
        if let Some((prefix, _)) = self.open.remove(&id) {
            if let Some(n) = self.per_source.get_mut(&prefix) {
                *n -= 1;
                if *n == 0 {
                    self.per_source.remove(&prefix);
                }
            }
        }
    }

    /// Connections open now.
    pub fn len(&self) -> usize {
        self.open.len()
    }

    /// Whether none is open.
    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// One step of a limiter scenario: at `t` ms, `source` sends a wrong token (`fail`) or only
    /// asks; `limited` is whether a wrong token from it must wait.
    struct Step {
        t: u64,
        source: &'static str,
        fail: bool,
        limited: bool,
    }

    fn run(name: &str, steps: &[Step]) {
        let limiter = AuthLimiter::default();
        let t0 = Instant::now();
        for (i, s) in steps.iter().enumerate() {
            let now = t0 + Duration::from_millis(s.t);
            let limited = limiter.retry_after(ip(s.source), now).is_some();
            assert_eq!(
                limited, s.limited,
                "{name}: step {i} ({} at {} ms)",
                s.source, s.t
            );
            if s.fail {
                let held = matches!(
                    limiter.wrong_token(ip(s.source), now),
                    WrongToken::Held { .. }
                );
                assert_eq!(held, limited, "{name}: step {i} held");
            }
        }
    }

    fn burst(t: u64, source: &'static str, n: usize) -> Vec<Step> {
        (0..n)
            .map(|_| Step {
                t,
                source,
                fail: true,
                limited: false,
            })
            .collect()
    }

    fn ask(t: u64, source: &'static str, limited: bool) -> Step {
        Step {
            t,
            source,
            fail: false,
            limited,
        }
    }

    #[test]
    fn wrong_tokens_are_limited_per_prefix_and_in_total() {
        let cases: Vec<(&str, Vec<Step>)> = vec![
            (
                "10 from one address, then it waits; half a second buys one more",
                {
                    let mut s = burst(0, "10.0.0.1", 10);
                    s.push(ask(0, "10.0.0.1", true));
                    s.push(ask(499, "10.0.0.1", true));
                    s.push(Step {
                        t: 500,
                        source: "10.0.0.1",
                        fail: true,
                        limited: false,
                    });
                    s.push(ask(500, "10.0.0.1", true));
                    s.push(ask(5500, "10.0.0.1", false));
                    s
                },
            ),
            ("rotating addresses in one IPv4 /24 shares one budget", {
                let mut s: Vec<Step> = ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5"]
                    .iter()
                    .flat_map(|a| burst(0, a, 2))
                    .collect();
                s.push(ask(0, "10.0.0.200", true));
                s.push(ask(0, "10.0.1.1", false));
                s
            }),
            ("rotating addresses in one IPv6 /64 shares one budget", {
                let mut s = burst(0, "2001:db8:0:1::1", 5);
                s.extend(burst(0, "2001:db8:0:1:ffff:ffff:ffff:ffff", 5));
                s.push(ask(0, "2001:db8:0:1::77", true));
                s.push(ask(0, "2001:db8:0:2::1", false));
                s
            }),
            ("a v4-mapped address counts as its IPv4 /24", {
                let mut s = burst(0, "::ffff:10.0.0.1", 10);
                s.push(ask(0, "10.0.0.9", true));
                s
            }),
            ("50 wrong tokens from 50 networks spend the total budget", {
                const NETS: [&str; 50] = [
                    "10.0.1.1",
                    "10.0.2.1",
                    "10.0.3.1",
                    "10.0.4.1",
                    "10.0.5.1",
                    "10.0.6.1",
                    "10.0.7.1",
                    "10.0.8.1",
                    "10.0.9.1",
                    "10.0.10.1",
                    "10.0.11.1",
                    "10.0.12.1",
                    "10.0.13.1",
                    "10.0.14.1",
                    "10.0.15.1",
                    "10.0.16.1",
                    "10.0.17.1",
                    "10.0.18.1",
                    "10.0.19.1",
                    "10.0.20.1",
                    "10.0.21.1",
                    "10.0.22.1",
                    "10.0.23.1",
                    "10.0.24.1",
                    "10.0.25.1",
                    "10.0.26.1",
                    "10.0.27.1",
                    "10.0.28.1",
                    "10.0.29.1",
                    "10.0.30.1",
                    "10.0.31.1",
                    "10.0.32.1",
                    "10.0.33.1",
                    "10.0.34.1",
                    "10.0.35.1",
                    "10.0.36.1",
                    "10.0.37.1",
                    "10.0.38.1",
                    "10.0.39.1",
                    "10.0.40.1",
                    "10.0.41.1",
                    "10.0.42.1",
                    "10.0.43.1",
                    "10.0.44.1",
                    "10.0.45.1",
                    "10.0.46.1",
                    "10.0.47.1",
                    "10.0.48.1",
                    "10.0.49.1",
                    "10.0.50.1",
                ];
                let mut s: Vec<Step> = NETS.iter().flat_map(|a| burst(0, a, 1)).collect();
                s.push(ask(0, "192.0.2.1", true));
                s.push(ask(0, "2001:db8::1", true));
                // The total regains 10 a second: one is back after 100 ms.
                s.push(ask(99, "192.0.2.1", true));
                s.push(ask(100, "192.0.2.1", false));
                s
            }),
        ];
        for (name, steps) in &cases {
            run(name, steps);
        }
    }

    #[test]
    fn retry_after_says_how_long_until_an_attempt_is_back() {
        let limiter = AuthLimiter::default();
        let t0 = Instant::now();
        for _ in 0..10 {
            limiter.wrong_token(ip("10.0.0.1"), t0);
        }
        assert_eq!(
            limiter.retry_after(ip("10.0.0.1"), t0),
            Some(Duration::from_millis(500))
        );
        let t1 = t0 + Duration::from_millis(200);
        let wait = limiter
            .retry_after(ip("10.0.0.9"), t1)
            .expect("the /24 waits");
        assert!(
            wait.abs_diff(Duration::from_millis(300)) < Duration::from_millis(1),
            "{wait:?}"
        );
    }

    /// A wrong token over the budget is held: (ms since the first guess, source, expected
    /// verdict: `None` = 401 at once, `Some((hold ms, Retry-After ms))` = 429 after the hold).
    #[test]
    fn wrong_tokens_over_the_budget_are_held_and_the_hold_is_capped() {
        type Case = (&'static str, Vec<(u64, String, Option<(u64, u64)>)>);
        let burst = |t: u64, source: &str, n: usize| vec![(t, source.to_owned(), None); n];
        let cases: Vec<Case> = vec![
            (
                "one guess at a time: 10 at once, then one answer every 500 ms (2 a second)",
                {
                    let mut s = burst(0, "10.0.0.1", 10);
                    // Each guess waits for its answer before the next.
                    s.push((0, "10.0.0.1".into(), Some((500, 500))));
                    s.push((500, "10.0.0.1".into(), Some((500, 500))));
                    s.push((1000, "10.0.0.1".into(), Some((500, 500))));
                    // Waiting out Retry-After: checked again.
                    s.push((2000, "10.0.0.1".into(), None));
                    s
                },
            ),
            (
                "guesses at once: each pushes the next further out, capped at 5 s",
                {
                    let mut s = burst(0, "10.0.0.1", 10);
                    for k in 1..=10u64 {
                        let hold = (500 * k).min(5000);
                        s.push((
                            0,
                            "10.0.0.1".into(),
                            Some((hold, (hold + 500).min(5000) - hold)),
                        ));
                    }
                    // The debt is capped too: 100 more at once are each held 5 s...
                    s.extend(vec![(0, "10.0.0.2".into(), Some((5000, 0))); 100]);
                    // ...and 5 s after the last, a wrong token is checked again.
                    s.push((5000, "10.0.0.3".into(), None));
                    s
                },
            ),
            ("another network is not held by this one's guesses", {
                let mut s = burst(0, "10.0.0.1", 12);
                s[10].2 = Some((500, 500));
                s[11].2 = Some((1000, 500));
                s.push((0, "10.0.1.1".into(), None));
                s
            }),
            (
                "the total budget holds every network: 50 at once, then 10 a second",
                {
                    let mut s: Vec<_> = (1..=50u8)
                        .map(|n| (0, format!("10.{n}.0.1"), None))
                        .collect();
                    s.push((0, "192.0.2.1".into(), Some((100, 100))));
                    s.push((0, "2001:db8::1".into(), Some((200, 100))));
                    s
                },
            ),
        ];
        for (name, steps) in cases {
            let limiter = AuthLimiter::default();
            let t0 = Instant::now();
            for (i, (t, source, want)) in steps.into_iter().enumerate() {
                let got = limiter.wrong_token(ip(&source), t0 + Duration::from_millis(t));
                let ms = |d: Duration| d.as_secs_f64() * 1000.0;
                match (got, want) {
                    (WrongToken::Checked { .. }, None) => {}
                    (WrongToken::Held { hold, retry_after }, Some((h, r))) => assert!(
                        (ms(hold) - h as f64).abs() < 0.5
                            && (ms(retry_after) - r as f64).abs() < 0.5,
                        "{name}: step {i} at {t} ms from {source}: held {hold:?}, \
                         retry after {retry_after:?}; expected {h} ms, {r} ms"
                    ),
                    (got, want) => {
                        panic!(
                            "{name}: step {i} at {t} ms from {source}: {got:?}, expected {want:?}"
                        )
                    }
                }
            }
        }
    }

    #[test]
    fn tracked_prefixes_are_bounded() {
        let limiter = AuthLimiter::default();
        let now = Instant::now();
        for i in 0..(AUTH_SOURCES_TRACKED as u32 + 100) {
            limiter.wrong_token(IpAddr::from((i << 8).to_be_bytes()), now);
        }
        assert!(limiter.tracked() <= AUTH_SOURCES_TRACKED);
    }

    #[test]
    fn connections_are_bounded_per_source_and_in_total() {
        // (action, connection id, source, expected) with a table of 4 total, 2 per source.
        enum Op {
            Open(u64, &'static str, Admit),
            Busy(u64),
            Close(u64),
        }
        use Op::*;
        let serve = |evict: &[u64]| Admit::Serve {
            evict: evict.to_vec(),
        };
        let ops = [
            Open(1, "10.0.0.1", serve(&[])),
            Open(2, "10.0.0.1", serve(&[])),
            Open(3, "10.0.0.1", Admit::PerSourceLimit),
            // Another address of the same /24 is another source.
            Open(4, "10.0.0.2", serve(&[])),
            Open(5, "::ffff:10.0.0.2", serve(&[])),
            Open(6, "2001:db8::1", serve(&[1])),
            Open(7, "2001:db8::ffff", serve(&[2])),
            // The /64 has two open.
            Open(8, "2001:db8::2", Admit::PerSourceLimit),
            Close(6),
            Open(9, "2001:db8::2", serve(&[])),
            // 4, 5, 7, 9 open; 4 and 5 serve requests: the oldest idle is 7.
            Busy(4),
            Busy(5),
            Open(10, "192.0.2.1", serve(&[7])),
            Busy(9),
            Busy(10),
            Open(11, "192.0.2.2", Admit::TotalLimit),
            Close(10),
            Open(12, "192.0.2.2", serve(&[])),
        ];
        let mut table = ConnectionTable::new(4, 2);
        for (i, op) in ops.into_iter().enumerate() {
            match op {
                Open(id, source, want) => {
                    assert_eq!(
                        table.admit(id, ip(source)),
                        want,
                        "op {i}: open {id} from {source}"
                    );
                }
                Busy(id) => table.set_busy(id, true),
                Close(id) => table.close(id),
            }
            assert!(table.len() <= 4, "op {i}");
        }
        assert_eq!(table.len(), 4);
    }
}
