//! Backend selection: given a pool's backends as [`Node`]s (in pool order) and the client's
//! address, a [`Selector`] yields the [`Candidates`] to try, in order of preference — the pick
//! first, then the order failover should walk. It owns the pool's selection state (round-robin
//! current weights, the least-conn tie rotation) and nothing else: it must not touch sockets,
//! clocks, health or drain state (the caller says which backends are `available`), and its
//! randomness comes from the RNG the caller passes in, so every algorithm is testable without I/O.
//!
//! Slow start is a weight, not an algorithm: [`slow_start_share`] turns the moment a backend
//! became available again and the caller's `now` into the per-mille [`Node::share`] of its
//! weight that every algorithm then uses in place of the full weight.

use std::cmp::Ordering;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::Balance;

/// [`Node::share`] of a backend outside slow start: its whole weight (per mille).
pub const FULL_SHARE: u32 = 1000;
/// The share a backend starts slow start with (1 %): never 0, or a backend alone in its group
/// would weigh nothing, and the smallest step that still leaves room for the others.
pub const MIN_SHARE: u32 = 10;

/// Per mille of its weight a backend gets `now`, having become available again at `since`
/// (`None`: available since start) in a pool with `slow_start` (zero: off). Grows linearly from
/// [`MIN_SHARE`] right after `since` to [`FULL_SHARE`] once `slow_start` has passed, as NGINX
/// Plus's `slow_start` and HAProxy's `slowstart` grow the effective weight.
pub fn slow_start_share(since: Option<Instant>, now: Instant, slow_start: Duration) -> u32 {
    let Some(since) = since else {
        return FULL_SHARE;
    };
    let elapsed = now.saturating_duration_since(since);
    if slow_start.is_zero() || elapsed >= slow_start {
        return FULL_SHARE;
    }
    let share = elapsed.as_nanos() * u128::from(FULL_SHARE) / slow_start.as_nanos();
    // Below FULL_SHARE, since elapsed < slow_start.
    (share as u32).max(MIN_SHARE)
}

/// What selection needs to know about one backend, in pool order.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Node {
    /// Relative share of new connections; at least 1 (0 is treated as 1).
    pub weight: u32,
    /// Takes new connections only while no primary is available.
    pub backup: bool,
    /// Health up (or not yet probed) and admin state active.
    pub available: bool,
    /// Connections open to this backend now (with `[fleet]`, the other instances' too).
    pub active: u64,
    /// Stable id of the backend (e.g. [`stable_hash`] of its name), used by source hashing.
    pub key: u64,
    /// Per mille of `weight` it gets now: [`FULL_SHARE`] but during slow start (see
    /// [`slow_start_share`]); 0 is treated as 1.
    pub share: u32,
}

/// Per-pool selection state, shared by all connections of the pool.
///
/// `Send + Sync`: round robin takes a short mutex per call, least-conn one atomic increment, the
/// other algorithms keep no state.
#[derive(Debug)]
pub struct Selector {
    balance: Balance,
    /// Smooth weighted round robin's `current_weight`, indexed like the `nodes` slice. A mutex
    /// rather than atomics because one pick reads and updates every entry as a unit.
    current: Mutex<Vec<i64>>,
    /// Rotates which of several equally loaded backends least-conn puts first, so equal backends
    /// share a burst of new connections instead of the lowest index taking all of it.
    rotation: AtomicUsize,
}

impl Selector {
    /// A selector with fresh state for `balance`.
    pub fn new(balance: Balance) -> Self {
        Selector {
            balance,
            current: Mutex::new(Vec::new()),
            rotation: AtomicUsize::new(0),
        }
    }

    /// The algorithm this selector runs.
    pub fn balance(&self) -> Balance {
        self.balance
    }

    /// Candidates (indices into `nodes`) in order of preference: all available primaries first,
    /// ordered by the algorithm, then all available backups in the same algorithm's order.
    /// Unavailable nodes never appear. Empty when nothing is available.
    ///
    /// Only the group that serves (primaries, or backups when no primary is available) advances
    /// round-robin state; the other group is listed in the order it would be picked.
    pub fn candidates<R: rand::Rng + ?Sized>(
        &self,
        nodes: &[Node],
        client: IpAddr,
        rng: &mut R,
    ) -> Candidates {
        let available = nodes.iter().filter(|n| n.available).count();
        let mut out = Candidates::with_capacity(available);
        for (i, _) in nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.available && !n.backup)
        {
            out.push(i);
        }
        let primaries = out.len();
        for (i, _) in nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.available && n.backup)
        {
            out.push(i);
        }
        let (primary, backup) = out.all_mut().split_at_mut(primaries);
        let backups_serve = primary.is_empty();

        match self.balance {
            Balance::RoundRobin => {
                // Poisoning only means another connection panicked mid-pick; the weights are
                // still plain integers, and refusing to balance would be worse.
                let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
                if current.len() != nodes.len() {
                    // The pool changed shape (reload): old slots no longer name the same backends.
                    current.clear();
                    current.resize(nodes.len(), 0);
                }
                order_round_robin(nodes, primary, &mut current, true);
                order_round_robin(nodes, backup, &mut current, backups_serve);
            }
            Balance::LeastConn => {
                let rotation = self.rotation.fetch_add(1, AtomicOrdering::Relaxed);
                order_least_conn(nodes, primary, rotation);
                order_least_conn(nodes, backup, rotation);
            }
            Balance::RandomTwo => {
                order_random_two(nodes, primary, rng);
                order_random_two(nodes, backup, rng);
            }
            Balance::SourceHash => {
                let client = client_hash(client);
                order_source_hash(nodes, primary, client);
                order_source_hash(nodes, backup, client);
            }
        }
        out
    }
}

/// Backends to try, as indices into the `nodes` slice, best first.
///
/// An iterator that yields each index once; [`as_slice`](Self::as_slice), [`first`](Self::first)
/// and `len()` describe the ones not yet yielded. Up to 8 candidates live inline (no heap
/// allocation); larger pools spill to a `Vec`.
#[derive(Debug, Clone)]
pub struct Candidates {
    store: Store,
    /// How many have been yielded by `next()`.
    pos: usize,
}

/// Candidates kept inline up to this many; RabbitMQ clusters are 3–7 nodes.
const INLINE: usize = 8;

#[derive(Debug, Clone)]
enum Store {
    Inline { buf: [usize; INLINE], len: usize },
    Spilled(Vec<usize>),
}

impl Candidates {
    fn with_capacity(capacity: usize) -> Self {
        let store = if capacity <= INLINE {
            Store::Inline {
                buf: [0; INLINE],
                len: 0,
            }
        } else {
            Store::Spilled(Vec::with_capacity(capacity))
        };
        Candidates { store, pos: 0 }
    }

    fn push(&mut self, index: usize) {
        match &mut self.store {
            Store::Inline { buf, len } if *len < INLINE => {
                buf[*len] = index;
                *len += 1;
            }
            Store::Inline { buf, len } => {
                let mut spilled = Vec::with_capacity(INLINE * 2);
                spilled.extend_from_slice(&buf[..*len]);
                spilled.push(index);
                self.store = Store::Spilled(spilled);
            }
            Store::Spilled(v) => v.push(index),
        }
    }

    fn all(&self) -> &[usize] {
        match &self.store {
            Store::Inline { buf, len } => &buf[..*len],
            Store::Spilled(v) => v,
        }
    }

    fn all_mut(&mut self) -> &mut [usize] {
        match &mut self.store {
            Store::Inline { buf, len } => &mut buf[..*len],
            Store::Spilled(v) => v,
        }
    }

    /// At most one candidate: `index` (a per-backend listener's own backend, when it may take
    /// connections).
    pub fn only(index: Option<usize>) -> Self {
        let mut one = Self::with_capacity(1);
        if let Some(index) = index {
            one.push(index);
        }
        one
    }

    /// The candidates not yet yielded, best first.
    pub fn as_slice(&self) -> &[usize] {
        &self.all()[self.pos..]
    }

    /// The best candidate not yet yielded (the pick, before iteration starts).
    pub fn first(&self) -> Option<usize> {
        self.as_slice().first().copied()
    }

    /// True when no candidate is left (nothing was available, or all were yielded).
    pub fn is_empty(&self) -> bool {
        self.as_slice().is_empty()
    }
}

impl Iterator for Candidates {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        let next = self.first()?;
        self.pos += 1;
        Some(next)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.as_slice().len();
        (left, Some(left))
    }
}

impl ExactSizeIterator for Candidates {}

/// Stable 64-bit FNV-1a hash, identical across runs, builds and platforms (unlike std's
/// `RandomState`), for [`Node::key`] and source hashing.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes
        .iter()
        .fold(OFFSET, |h, &b| (h ^ u64::from(b)).wrapping_mul(PRIME))
}

/// The weight every algorithm uses: the configured weight scaled by the slow-start share. All
/// of them depend only on the ratios of weights, so a share of [`FULL_SHARE`] on every node
/// balances exactly as the plain weights do.
fn weight(node: &Node) -> u64 {
    u64::from(node.weight.max(1)) * u64::from(node.share.clamp(1, FULL_SHARE))
}

/// Compares `active / weight` without floats or overflow.
fn cmp_load(a: &Node, b: &Node) -> Ordering {
    let lhs = u128::from(a.active) * u128::from(weight(b));
    let rhs = u128::from(b.active) * u128::from(weight(a));
    lhs.cmp(&rhs)
}

/// Moves `pick` to the front of `group`, keeping the others in their order.
fn move_to_front(group: &mut [usize], pick: usize) {
    if let Some(pos) = group.iter().position(|&i| i == pick) {
        group[..=pos].rotate_right(1);
    }
}

/// NGINX's smooth weighted round robin (`ngx_http_upstream_get_peer`), over one group.
///
/// When `serving`, the group's weights advance and the pick goes first; the rest follow by
/// `current + weight` descending, ties to the lower index — exactly the order in which the
/// following picks would come, so failover tries the backend that would have been next.
fn order_round_robin(nodes: &[Node], group: &mut [usize], current: &mut [i64], serving: bool) {
    let Some(&first) = group.first() else {
        return;
    };
    let upcoming = |current: &[i64], i: usize| current[i] + weight(&nodes[i]) as i64;
    let mut pick = None;
    if serving {
        let mut total = 0i64;
        let mut best = first;
        for &i in group.iter() {
            let w = weight(&nodes[i]) as i64;
            current[i] += w;
            total += w;
            // Strictly greater, as NGINX: on a tie the earlier backend wins.
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        pick = Some(best);
    }
    group.sort_unstable_by(|&a, &b| {
        upcoming(current, b)
            .cmp(&upcoming(current, a))
            .then(a.cmp(&b))
    });
    if let Some(pick) = pick {
        move_to_front(group, pick);
    }
}

/// Weighted least connections: lowest `active / weight` first. Each run of equally loaded
/// backends is rotated by `rotation`, so ties take turns being first.
fn order_least_conn(nodes: &[Node], group: &mut [usize], rotation: usize) {
    group.sort_unstable_by(|&a, &b| cmp_load(&nodes[a], &nodes[b]).then(a.cmp(&b)));
    let mut start = 0;
    while start < group.len() {
        let head = &nodes[group[start]];
        let run = group[start..]
            .iter()
            .take_while(|&&i| cmp_load(&nodes[i], head) == Ordering::Equal)
            .count();
        group[start..start + run].rotate_left(rotation % run);
        start += run;
    }
}

/// Power of two choices: two distinct backends drawn with probability proportional to weight,
/// the less loaded first (the first drawn on a tie), the other second, the rest by load.
fn order_random_two<R: rand::Rng + ?Sized>(nodes: &[Node], group: &mut [usize], rng: &mut R) {
    if group.len() < 2 {
        return;
    }
    let one = draw_weighted(nodes, group, None, rng);
    let two = draw_weighted(nodes, group, Some(one), rng);
    let (best, second) = if cmp_load(&nodes[two], &nodes[one]) == Ordering::Less {
        (two, one)
    } else {
        (one, two)
    };
    group.sort_unstable_by(|&a, &b| cmp_load(&nodes[a], &nodes[b]).then(a.cmp(&b)));
    move_to_front(group, second);
    move_to_front(group, best);
}

/// One backend of `group` (other than `exclude`), with probability proportional to weight.
fn draw_weighted<R: rand::Rng + ?Sized>(
    nodes: &[Node],
    group: &[usize],
    exclude: Option<usize>,
    rng: &mut R,
) -> usize {
    let eligible = || group.iter().copied().filter(move |&i| Some(i) != exclude);
    let total: u64 = eligible().map(|i| weight(&nodes[i])).sum();
    let mut ticket = rng.gen_range(0..total);
    for i in eligible() {
        let w = weight(&nodes[i]);
        if ticket < w {
            return i;
        }
        ticket -= w;
    }
    unreachable!("ticket drawn below the total weight of the eligible backends")
}

/// Hash of the client address. An IPv4-mapped IPv6 address (a dual-stack listener) hashes as
/// the IPv4 address it carries, so a client keeps its backend whichever socket it came in on.
fn client_hash(client: IpAddr) -> u64 {
    match client.to_canonical() {
        IpAddr::V4(v4) => stable_hash(&v4.octets()),
        IpAddr::V6(v6) => stable_hash(&v6.octets()),
    }
}

/// SplitMix64's finalizer: FNV-1a alone leaves too little avalanche for rendezvous scores.
fn mix(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Weighted rendezvous score `weight / -ln(u)`, with `u` in (0, 1) from the client+backend
/// hash; the highest score wins. The score of a pair depends on nothing else, which is why a
/// backend going away moves only its own clients.
fn rendezvous_score(node: &Node, client: u64) -> (f64, u64) {
    let h = mix(client ^ mix(node.key));
    // Top 53 bits fit an f64 exactly; the half step keeps u away from 0 and 1.
    let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    (weight(node) as f64 / -u.ln(), h)
}

/// Weighted rendezvous (HRW) hashing of the client against each backend's key, best first.
fn order_source_hash(nodes: &[Node], group: &mut [usize], client: u64) {
    // Scores are positive, so their bit patterns order like the floats; computing each once
    // keeps large pools cheap (a comparator would recompute two logarithms per comparison).
    group.sort_by_cached_key(|&i| {
        let (score, h) = rendezvous_score(&nodes[i], client);
        (std::cmp::Reverse(score.to_bits()), std::cmp::Reverse(h), i)
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use std::collections::HashSet;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10));

    fn node(name: &str, weight: u32) -> Node {
        Node {
            weight,
            backup: false,
            available: true,
            active: 0,
            key: stable_hash(name.as_bytes()),
            share: FULL_SHARE,
        }
    }

    fn backup(name: &str, weight: u32) -> Node {
        Node {
            backup: true,
            ..node(name, weight)
        }
    }

    fn down(n: Node) -> Node {
        Node {
            available: false,
            ..n
        }
    }

    fn rng() -> StdRng {
        StdRng::seed_from_u64(0x5eed)
    }

    /// How often each node is the first candidate over `picks` calls.
    fn first_counts(selector: &Selector, nodes: &[Node], picks: usize) -> Vec<usize> {
        let mut rng = rng();
        let mut counts = vec![0; nodes.len()];
        for _ in 0..picks {
            let first = selector.candidates(nodes, CLIENT, &mut rng).first();
            counts[first.expect("something available")] += 1;
        }
        counts
    }

    fn ipv4(i: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i))
    }

    fn hash_pick(nodes: &[Node], ip: IpAddr) -> Option<usize> {
        Selector::new(Balance::SourceHash)
            .candidates(nodes, ip, &mut rng())
            .first()
    }

    const ALL: [Balance; 4] = [
        Balance::RoundRobin,
        Balance::LeastConn,
        Balance::RandomTwo,
        Balance::SourceHash,
    ];

    #[test]
    fn stable_hash_is_fnv1a_64() {
        let cases: [(&[u8], u64); 3] = [
            (b"", 0xcbf2_9ce4_8422_2325),
            (b"a", 0xaf63_dc4c_8601_ec8c),
            (b"foobar", 0x8594_4171_f739_67e8),
        ];
        for (input, want) in cases {
            assert_eq!(stable_hash(input), want, "input {input:?}");
        }
    }

    #[test]
    fn every_algorithm_lists_each_available_node_once_primaries_then_backups() {
        let nodes = [
            node("a", 1),
            backup("x", 1),
            down(node("b", 3)),
            node("c", 2),
            down(backup("y", 1)),
            backup("z", 2),
            node("d", 1),
        ];
        for balance in ALL {
            let selector = Selector::new(balance);
            let mut rng = rng();
            for _ in 0..50 {
                let got: Vec<usize> = selector.candidates(&nodes, CLIENT, &mut rng).collect();
                let (primaries, backups) = got.split_at(3);
                let primaries: HashSet<usize> = primaries.iter().copied().collect();
                let backups: HashSet<usize> = backups.iter().copied().collect();
                assert_eq!(got.len(), 5, "{balance:?}: {got:?}");
                assert_eq!(primaries, HashSet::from([0, 3, 6]), "{balance:?}: {got:?}");
                assert_eq!(backups, HashSet::from([1, 5]), "{balance:?}: {got:?}");
            }
        }
    }

    #[test]
    fn every_algorithm_yields_nothing_when_nothing_is_available() {
        let cases: [&[Node]; 3] = [&[], &[down(node("a", 1))], &[down(backup("x", 1))]];
        for balance in ALL {
            for nodes in cases {
                let candidates = Selector::new(balance).candidates(nodes, CLIENT, &mut rng());
                assert!(candidates.is_empty(), "{balance:?} {nodes:?}");
                assert_eq!(candidates.first(), None);
            }
        }
    }

    #[test]
    fn every_algorithm_puts_a_backup_first_only_when_no_primary_is_available() {
        for balance in ALL {
            let selector = Selector::new(balance);
            let mut rng = rng();
            for nodes in [
                [node("a", 1), backup("x", 100), backup("y", 100)],
                [down(node("a", 1)), backup("x", 1), backup("y", 1)],
            ] {
                for _ in 0..100 {
                    let first = selector.candidates(&nodes, CLIENT, &mut rng).first();
                    let first = &nodes[first.expect("available")];
                    assert_eq!(first.backup, !nodes[0].available, "{balance:?}");
                }
            }
        }
    }

    #[test]
    fn candidates_spill_beyond_eight_nodes() {
        let nodes: Vec<Node> = (0..20)
            .map(|i| Node {
                backup: i % 5 == 0,
                available: i % 7 != 3,
                active: i,
                ..node(&format!("n{i}"), 1 + i as u32 % 3)
            })
            .collect();
        let want: HashSet<usize> = (0..20).filter(|&i| nodes[i].available).collect();
        for balance in ALL {
            let candidates = Selector::new(balance).candidates(&nodes, CLIENT, &mut rng());
            assert_eq!(candidates.len(), want.len(), "{balance:?}");
            let got: Vec<usize> = candidates.collect();
            assert_eq!(got.iter().copied().collect::<HashSet<_>>(), want);
            let primaries = want.iter().filter(|&&i| !nodes[i].backup).count();
            assert_eq!(primaries, 14);
            assert!(
                got[..primaries].iter().all(|&i| !nodes[i].backup),
                "{got:?}"
            );
            assert!(got[primaries..].iter().all(|&i| nodes[i].backup), "{got:?}");
        }
    }

    #[test]
    fn candidates_iterate_and_describe_what_is_left() {
        let nodes = [node("a", 1), node("b", 1), node("c", 1)];
        let mut candidates =
            Selector::new(Balance::RoundRobin).candidates(&nodes, CLIENT, &mut rng());
        assert_eq!(candidates.as_slice(), &[0, 1, 2]);
        assert_eq!(candidates.next(), Some(0));
        assert_eq!(candidates.len(), 2);
        assert_eq!(candidates.first(), Some(1));
        assert_eq!(candidates.as_slice(), &[1, 2]);
        assert_eq!(candidates.by_ref().count(), 2);
        assert!(candidates.is_empty());
        assert_eq!(candidates.next(), None);
    }

    #[test]
    fn round_robin_distributes_by_weight() {
        let cases: [(&[Node], usize, &[usize]); 4] = [
            (
                &[node("a", 1), node("b", 1), node("c", 1)],
                300,
                &[100, 100, 100],
            ),
            (
                &[node("a", 3), node("b", 2), node("c", 1)],
                600,
                &[300, 200, 100],
            ),
            (
                &[node("a", 1), down(node("b", 1)), node("c", 1)],
                300,
                &[150, 0, 150],
            ),
            (
                &[down(node("a", 1)), backup("x", 1), backup("y", 1)],
                300,
                &[0, 150, 150],
            ),
        ];
        for (nodes, picks, want) in cases {
            let counts = first_counts(&Selector::new(Balance::RoundRobin), nodes, picks);
            assert_eq!(counts, want, "{nodes:?}");
        }
    }

    #[test]
    fn round_robin_follows_the_nginx_sequence_for_5_1_1() {
        let nodes = [node("a", 5), node("b", 1), node("c", 1)];
        let selector = Selector::new(Balance::RoundRobin);
        let sequence: String = (0..14)
            .map(|_| {
                let first = selector.candidates(&nodes, CLIENT, &mut rng()).first();
                ["a", "b", "c"][first.unwrap()]
            })
            .collect();
        assert_eq!(sequence, "aabacaaaabacaa");
    }

    #[test]
    fn round_robin_lists_the_would_be_next_pick_second() {
        let nodes = [node("a", 5), node("b", 1), node("c", 1)];
        let selector = Selector::new(Balance::RoundRobin);
        let mut previous: Option<Vec<usize>> = None;
        for _ in 0..14 {
            let got: Vec<usize> = selector.candidates(&nodes, CLIENT, &mut rng()).collect();
            // Whenever the pick changes hands, it goes to the one listed second last time.
            if let Some(previous) = previous.filter(|p| p[0] != got[0]) {
                assert_eq!(previous[1], got[0], "second of {previous:?} vs {got:?}");
            }
            previous = Some(got);
        }
    }

    #[test]
    fn round_robin_never_lists_an_unavailable_node() {
        let nodes = [
            node("a", 1),
            down(node("b", 5)),
            node("c", 1),
            down(backup("x", 1)),
        ];
        let selector = Selector::new(Balance::RoundRobin);
        for _ in 0..100 {
            let got: Vec<usize> = selector.candidates(&nodes, CLIENT, &mut rng()).collect();
            assert!(!got.contains(&1) && !got.contains(&3), "{got:?}");
        }
    }

    #[test]
    fn round_robin_resets_state_when_the_pool_changes_size() {
        let selector = Selector::new(Balance::RoundRobin);
        let three = [node("a", 3), node("b", 1), node("c", 1)];
        let two = [node("a", 1), node("b", 1)];
        for nodes in [&three[..], &two[..], &three[..], &[][..], &two[..]] {
            for _ in 0..7 {
                let got = selector.candidates(nodes, CLIENT, &mut rng());
                assert_eq!(got.len(), nodes.len());
            }
        }
        // Back to three nodes: the sequence starts over as for a fresh selector.
        let fresh = Selector::new(Balance::RoundRobin);
        for _ in 0..10 {
            assert_eq!(
                selector.candidates(&three, CLIENT, &mut rng()).first(),
                fresh.candidates(&three, CLIENT, &mut rng()).first()
            );
        }
    }

    #[test]
    fn least_conn_puts_the_least_loaded_first() {
        let cases: [(&[(u32, u64)], usize); 5] = [
            (&[(1, 5), (1, 0), (1, 5)], 1),
            (&[(1, 3), (1, 2), (1, 4)], 1),
            (&[(3, 6), (1, 3)], 0), // 2 per weight beats 3
            (&[(1, 0), (10, 1)], 0),
            (&[(1, 1), (10, 1)], 1),
        ];
        for (spec, want) in cases {
            let nodes: Vec<Node> = spec
                .iter()
                .map(|&(weight, active)| Node {
                    active,
                    ..node("n", weight)
                })
                .collect();
            let selector = Selector::new(Balance::LeastConn);
            for _ in 0..10 {
                let first = selector.candidates(&nodes, CLIENT, &mut rng()).first();
                assert_eq!(first, Some(want), "{spec:?}");
            }
        }
    }

    #[test]
    fn least_conn_rotates_through_ties() {
        let tied = |weight, active| Node {
            active,
            ..node("n", weight)
        };
        let cases: [(&[Node], usize, &[usize]); 3] = [
            // 2/2 == 1/1: a weighted tie.
            (&[tied(2, 2), tied(1, 1)], 10, &[5, 5]),
            (&[tied(1, 0), tied(1, 0), tied(1, 0)], 300, &[100, 100, 100]),
            // Only 0 and 2 tie; the busy node in between must not skew their turns.
            (&[tied(1, 0), tied(1, 9), tied(1, 0)], 300, &[150, 0, 150]),
        ];
        for (nodes, picks, want) in cases {
            let counts = first_counts(&Selector::new(Balance::LeastConn), nodes, picks);
            assert_eq!(counts, want, "{nodes:?}");
        }
    }

    #[test]
    fn least_conn_converges_to_weight_proportional_load() {
        let cases: [&[u32]; 3] = [&[1, 1, 1], &[1, 2, 3, 4], &[5, 1, 1, 3]];
        for weights in cases {
            let mut nodes: Vec<Node> = weights.iter().map(|&w| node("n", w)).collect();
            let selector = Selector::new(Balance::LeastConn);
            for _ in 0..1000 {
                let first = selector.candidates(&nodes, CLIENT, &mut rng()).first();
                nodes[first.unwrap()].active += 1;
            }
            let total: u32 = weights.iter().sum();
            for (n, &w) in nodes.iter().zip(weights) {
                let fair = 1000.0 * f64::from(w) / f64::from(total);
                assert!(
                    (n.active as f64 - fair).abs() <= 1.0,
                    "weights {weights:?}: {n:?}, fair {fair}"
                );
            }
        }
    }

    #[test]
    fn random_two_spreads_idle_equal_nodes_evenly() {
        let nodes = [node("a", 1), node("b", 1), node("c", 1)];
        let counts = first_counts(&Selector::new(Balance::RandomTwo), &nodes, 30_000);
        for count in counts {
            assert!((9_500..=10_500).contains(&count), "{count}");
        }
    }

    #[test]
    fn random_two_avoids_a_loaded_node() {
        let busy = Node {
            active: 100,
            ..node("a", 1)
        };
        let nodes = [busy, node("b", 1), node("c", 1)];
        let counts = first_counts(&Selector::new(Balance::RandomTwo), &nodes, 30_000);
        // The busy node wins only when drawn with itself, which never happens: it is never first.
        assert_eq!(counts[0], 0, "{counts:?}");
        assert!(counts[1] > 14_000 && counts[2] > 14_000, "{counts:?}");

        let nodes = [busy, node("b", 1), node("c", 1), node("d", 1), node("e", 1)];
        let counts = first_counts(&Selector::new(Balance::RandomTwo), &nodes, 30_000);
        assert_eq!(counts[0], 0, "{counts:?}");
    }

    #[test]
    fn random_two_respects_weights() {
        let cases: [(&[u32], &[f64]); 2] =
            [(&[2, 1, 1], &[0.5, 0.25, 0.25]), (&[3, 1], &[0.75, 0.25])];
        for (weights, shares) in cases {
            let nodes: Vec<Node> = weights.iter().map(|&w| node("n", w)).collect();
            let counts = first_counts(&Selector::new(Balance::RandomTwo), &nodes, 40_000);
            for (count, share) in counts.iter().zip(shares) {
                let got = *count as f64 / 40_000.0;
                assert!((got - share).abs() < 0.02, "{weights:?}: {counts:?}");
            }
        }
    }

    #[test]
    fn random_two_lists_the_other_draw_second_then_by_load() {
        let nodes: Vec<Node> = [7, 3, 0, 5, 1]
            .iter()
            .map(|&active| Node {
                active,
                ..node("n", 1)
            })
            .collect();
        let selector = Selector::new(Balance::RandomTwo);
        let mut rng = rng();
        for _ in 0..200 {
            let got: Vec<usize> = selector.candidates(&nodes, CLIENT, &mut rng).collect();
            assert!(nodes[got[0]].active <= nodes[got[1]].active, "{got:?}");
            let rest: Vec<u64> = got[2..].iter().map(|&i| nodes[i].active).collect();
            assert!(rest.windows(2).all(|w| w[0] <= w[1]), "{got:?}");
        }
    }

    #[test]
    fn random_two_with_one_node_lists_just_it() {
        let nodes = [down(node("a", 1)), node("b", 1), backup("x", 1)];
        let got: Vec<usize> = Selector::new(Balance::RandomTwo)
            .candidates(&nodes, CLIENT, &mut rng())
            .collect();
        assert_eq!(got, [1, 2]);
    }

    #[test]
    fn source_hash_keeps_a_client_on_one_backend() {
        let nodes = [
            node("rabbit-a", 1),
            node("rabbit-b", 1),
            node("rabbit-c", 1),
        ];
        let selector = Selector::new(Balance::SourceHash);
        let clients = [
            CLIENT,
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x42)),
        ];
        for client in clients {
            let mut rng = rng();
            let want = selector.candidates(&nodes, client, &mut rng).first();
            for _ in 0..1000 {
                assert_eq!(selector.candidates(&nodes, client, &mut rng).first(), want);
            }
        }
    }

    #[test]
    fn source_hash_spreads_clients_evenly() {
        let nodes = [
            node("rabbit-a", 1),
            node("rabbit-b", 1),
            node("rabbit-c", 1),
        ];
        let mut v4 = [0usize; 3];
        let mut v6 = [0usize; 3];
        for i in 0..10_000 {
            v4[hash_pick(&nodes, ipv4(i)).unwrap()] += 1;
            let ip = IpAddr::V6(Ipv6Addr::from(0x2001_0db8_u128 << 96 | u128::from(i) << 16));
            v6[hash_pick(&nodes, ip).unwrap()] += 1;
        }
        for count in v4.iter().chain(&v6) {
            assert!((3_000..=3_667).contains(count), "v4 {v4:?} v6 {v6:?}");
        }
    }

    #[test]
    fn source_hash_moves_only_the_clients_of_a_removed_backend() {
        let nodes = [
            node("rabbit-a", 1),
            node("rabbit-b", 2),
            node("rabbit-c", 1),
            node("rabbit-d", 1),
        ];
        for gone in 0..nodes.len() {
            let mut without = nodes;
            without[gone].available = false;
            let mut moved = 0;
            for i in 0..10_000 {
                let before = hash_pick(&nodes, ipv4(i)).unwrap();
                let after = hash_pick(&without, ipv4(i)).unwrap();
                if before == gone {
                    moved += 1;
                    // Its clients go where they ranked second before.
                    let ranked =
                        Selector::new(Balance::SourceHash).candidates(&nodes, ipv4(i), &mut rng());
                    assert_eq!(after, ranked.as_slice()[1]);
                } else {
                    assert_eq!(after, before, "client {i} moved off a live backend");
                }
            }
            assert!(moved > 1_000, "backend {gone} had {moved} clients");
        }
    }

    #[test]
    fn source_hash_respects_weights() {
        let nodes = [node("rabbit-a", 2), node("rabbit-b", 1)];
        let mut counts = [0usize; 2];
        for i in 0..10_000 {
            counts[hash_pick(&nodes, ipv4(i)).unwrap()] += 1;
        }
        assert!((6_300..=7_000).contains(&counts[0]), "{counts:?}");
    }

    #[test]
    fn source_hash_treats_ipv4_mapped_ipv6_as_ipv4() {
        let nodes = [
            node("rabbit-a", 1),
            node("rabbit-b", 1),
            node("rabbit-c", 1),
        ];
        for i in 0..100 {
            let IpAddr::V4(v4) = ipv4(i * 7919) else {
                unreachable!()
            };
            let mapped = IpAddr::V6(v4.to_ipv6_mapped());
            assert_eq!(hash_pick(&nodes, mapped), hash_pick(&nodes, IpAddr::V4(v4)));
        }
    }

    #[test]
    fn source_hash_orders_backups_when_primaries_are_down() {
        let nodes = [down(node("a", 1)), backup("x", 1), backup("y", 1)];
        let mut counts = [0usize; 3];
        for i in 0..10_000 {
            counts[hash_pick(&nodes, ipv4(i)).unwrap()] += 1;
        }
        assert_eq!(counts[0], 0);
        assert!((4_500..=5_500).contains(&counts[1]), "{counts:?}");
    }

    fn ramping(n: Node, share: u32) -> Node {
        Node { share, ..n }
    }

    #[test]
    fn slow_start_share_grows_linearly_from_one_percent_to_full() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        // (since, elapsed, slow_start, share)
        let cases: [(Option<Instant>, Duration, Duration, u32); 11] = [
            (None, s(0), s(30), FULL_SHARE),
            (Some(t0), s(0), s(0), FULL_SHARE),
            (Some(t0), s(0), s(30), MIN_SHARE),
            (Some(t0), ms(100), s(30), MIN_SHARE),
            (Some(t0), ms(300), s(30), 10),
            (Some(t0), s(3), s(30), 100),
            (Some(t0), s(12), s(30), 400),
            (Some(t0), ms(29_999), s(30), 999),
            (Some(t0), s(30), s(30), FULL_SHARE),
            (Some(t0), s(3600), s(30), FULL_SHARE),
            (Some(t0), ms(1500), s(3), 500),
        ];
        for (since, elapsed, slow_start, want) in cases {
            let got = slow_start_share(since, t0 + elapsed, slow_start);
            assert_eq!(got, want, "{elapsed:?} of {slow_start:?}");
        }
        // A `now` before `since` (a clock read earlier on another thread) is the start.
        assert_eq!(slow_start_share(Some(t0 + s(1)), t0, s(30)), MIN_SHARE);
    }

    #[test]
    fn slow_start_share_never_decreases_over_the_ramp() {
        let t0 = Instant::now();
        let slow_start = Duration::from_secs(30);
        let shares: Vec<u32> = (0..=310)
            .map(|tenth| {
                slow_start_share(
                    Some(t0),
                    t0 + Duration::from_millis(tenth * 100),
                    slow_start,
                )
            })
            .collect();
        assert!(shares.windows(2).all(|w| w[0] <= w[1]), "{shares:?}");
        assert_eq!((shares[0], shares[300]), (MIN_SHARE, FULL_SHARE));
    }

    #[test]
    fn round_robin_gives_a_ramping_node_its_share_of_its_weight() {
        // (share of c, picks, counts): c weighs share/1000 of a and b.
        let cases: [(u32, usize, [usize; 3]); 4] = [
            (FULL_SHARE, 300, [100, 100, 100]),
            (500, 500, [200, 200, 100]),
            (250, 900, [400, 400, 100]),
            (MIN_SHARE, 2010, [1000, 1000, 10]),
        ];
        for (share, picks, want) in cases {
            let nodes = [node("a", 1), node("b", 1), ramping(node("c", 1), share)];
            let counts = first_counts(&Selector::new(Balance::RoundRobin), &nodes, picks);
            assert_eq!(counts, want, "share {share}");
        }
    }

    #[test]
    fn least_conn_fills_a_ramping_node_to_its_share_of_the_load() {
        // a and b hold 100 connections each; c came back empty. New connections that stay open
        // fill c up to share × the load of the others, then spread by the scaled weights.
        let cases: [(u32, u64); 4] = [(MIN_SHARE, 1), (100, 10), (400, 40), (FULL_SHARE, 100)];
        for (share, want_c) in cases {
            let mut nodes = [
                Node {
                    active: 100,
                    ..node("a", 1)
                },
                Node {
                    active: 100,
                    ..node("b", 1)
                },
                ramping(node("c", 1), share),
            ];
            let selector = Selector::new(Balance::LeastConn);
            let mut rng = rng();
            // Enough picks for c to reach its part, too few for a and b to grow past 100.
            for _ in 0..want_c {
                let first = selector
                    .candidates(&nodes, CLIENT, &mut rng)
                    .first()
                    .unwrap();
                nodes[first].active += 1;
            }
            assert_eq!(nodes[2].active, want_c, "share {share}: {nodes:?}");
            let next = selector.candidates(&nodes, CLIENT, &mut rng).first();
            assert_ne!(next, Some(2), "share {share}: c is full at {want_c}");
        }
    }

    #[test]
    fn random_two_draws_a_ramping_node_by_its_share() {
        // Idle nodes tie, so the first drawn wins: c is first with probability 0.1 / 2.1.
        let nodes = [node("a", 1), node("b", 1), ramping(node("c", 1), 100)];
        let counts = first_counts(&Selector::new(Balance::RandomTwo), &nodes, 42_000);
        assert!((1_600..=2_400).contains(&counts[2]), "{counts:?}");
    }

    #[test]
    fn source_hash_slow_start_only_moves_clients_onto_the_ramping_node() {
        let at = |share| {
            [
                node("rabbit-a", 1),
                node("rabbit-b", 1),
                ramping(node("rabbit-c", 1), share),
            ]
        };
        let clients: Vec<IpAddr> = (0..10_000).map(ipv4).collect();
        let mut previous: Option<Vec<usize>> = None;
        for share in [MIN_SHARE, 100, 250, 500, 750, FULL_SHARE] {
            let picks: Vec<usize> = clients
                .iter()
                .map(|&ip| hash_pick(&at(share), ip).unwrap())
                .collect();
            let on_c = picks.iter().filter(|&&p| p == 2).count();
            // Weighted rendezvous: c's part is share / (2 + share) of the clients.
            let f = f64::from(share) / f64::from(FULL_SHARE);
            let want = 10_000.0 * f / (2.0 + f);
            assert!(
                (on_c as f64 - want).abs() < 200.0,
                "share {share}: {on_c} on c, want {want}"
            );
            if let Some(previous) = &previous {
                for (before, after) in previous.iter().zip(&picks) {
                    assert!(before == after || *after == 2, "moved {before} -> {after}");
                }
            }
            previous = Some(picks);
        }
    }

    #[test]
    fn selector_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Selector>();
        assert_send_sync::<Candidates>();
        assert_eq!(
            Selector::new(Balance::SourceHash).balance(),
            Balance::SourceHash
        );
    }
}
