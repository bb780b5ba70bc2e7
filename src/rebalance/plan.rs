//! The rebalancer's arithmetic, pure: each backend's weighted fair share of a pool's
//! connections, what is above it, each instance's part of the fleet's excess ([`allocate`]),
//! and the paced instants at which connections are closed.
//! No clock of its own (instants come in), no routing, no sockets.

use std::time::{Duration, Instant};

use rand::Rng;

/// One backend as the plan sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Load {
    /// Its weight as new connections see it now (slow start's ramp applied); zero for a
    /// backend that takes no new connections while others do (a backup while a primary is up).
    pub weight: f64,
    /// Its connections, open or being set up, less those already leaving.
    pub connections: i64,
    /// It may take new connections (health not down, not drained). The others are left out:
    /// their connections are a drain's or a health check's business.
    pub available: bool,
}

/// What a pool should look like and what to move.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Connections to close per backend (in the order of the loads).
    pub excess: Vec<u64>,
    /// The fraction of the pool's connections above their backend's fair share: what a
    /// perfect rebalance would move (0: balanced).
    pub imbalance: f64,
    /// Every backend is within the tolerance of its fair share.
    pub balanced: bool,
}

/// Each available backend's fair share is its weight's part of the available backends'
/// connections. A backend is out of balance above `fair × (1 + tolerance)` (rounded up, so
/// a few connections never count as an imbalance); then what is above its fair share
/// (rounded up) is its excess. A backend with weight zero but connections (a backup while
/// primaries are back) has all of them in excess.
pub fn plan(loads: &[Load], tolerance: f64) -> Plan {
    let counted = |l: &Load| l.available.then_some(l.connections.max(0) as f64);
    let total: f64 = loads.iter().filter_map(counted).sum();
    let weights: f64 = loads.iter().filter(|l| l.available).map(|l| l.weight).sum();
    let mut excess = Vec::with_capacity(loads.len());
    let mut above = 0.0;
    for load in loads {
        let Some(count) = counted(load) else {
            excess.push(0);
            continue;
        };
        let fair = if weights > 0.0 {
            total * load.weight / weights
        } else {
            count
        };
        above += (count - fair).max(0.0);
        let allowed = (fair * (1.0 + tolerance)).ceil();
        excess.push(if count > allowed {
            (count - fair.ceil()) as u64
        } else {
            0
        });
    }
    Plan {
        balanced: excess.iter().all(|e| *e == 0),
        excess,
        imbalance: if total > 0.0 { above / total } else { 0.0 },
    }
}

/// Paces a pool's rebalance closes: consecutive instants are at least `1 / rate` apart, each
/// gap stretched by a random 0–50 % (so the moved clients do not reconnect in step), across
/// rounds too.
#[derive(Debug, Default)]
pub struct Pacer {
    /// The earliest instant of the next close.
    next: Option<Instant>,
}

impl Pacer {
    /// Up to `want` instants in `[now, now + horizon)`, paced for `rate` closes a second.
    pub fn slots(
        &mut self,
        now: Instant,
        want: u64,
        rate: f64,
        horizon: Duration,
        rng: &mut impl Rng,
    ) -> Vec<Instant> {
        let gap = Duration::from_secs_f64(1.0 / rate);
        let mut at = self.next.map_or(now, |next| next.max(now));
        let mut slots = Vec::new();
        while (slots.len() as u64) < want && at < now + horizon {
            slots.push(at);
            at += gap.mul_f64(1.0 + rng.gen_range(0.0..0.5));
        }
        if !slots.is_empty() {
            self.next = Some(at);
        }
        slots
    }
}

/// Share `slots` among backends by their excess: each slot to the backend with the most
/// excess left, so each gets its slots spread over the round. Returns each backend's slots
/// (in the order of `excess`).
pub fn share_out(slots: &[Instant], excess: &[u64]) -> Vec<Vec<Instant>> {
    let mut left = excess.to_vec();
    let mut shares = vec![Vec::new(); excess.len()];
    for slot in slots {
        let Some((i, _)) = left
            .iter()
            .enumerate()
            .filter(|(_, e)| **e > 0)
            .max_by_key(|(i, e)| (**e, std::cmp::Reverse(*i)))
        else {
            break;
        };
        left[i] -= 1;
        shares[i].push(*slot);
    }
    shares
}

/// Share a backend's fleet-wide `excess` among the instances holding its connections, in
/// proportion to each one's count there (largest remainder; equal remainders go to the
/// instance whose name sorts first), so that every instance computing it from the same counts
/// gets the same parts and the fleet closes the excess once, not once per instance. Returns
/// each instance's part in the order of `counts`; no part is above its count, and the parts
/// add up to `excess` (at most the counts' sum).
pub fn allocate(excess: u64, counts: &[(&str, i64)]) -> Vec<u64> {
    let held: Vec<u128> = counts.iter().map(|(_, n)| (*n).max(0) as u128).collect();
    let total: u128 = held.iter().sum();
    if total == 0 {
        return vec![0; counts.len()];
    }
    let excess = u128::from(excess).min(total);
    let mut parts: Vec<u64> = held.iter().map(|n| (excess * n / total) as u64).collect();
    let remainder = |i: usize| excess * held[i] % total;
    let mut left = excess as u64 - parts.iter().sum::<u64>();
    let mut order: Vec<usize> = (0..counts.len()).collect();
    order.sort_by(|&a, &b| {
        remainder(b)
            .cmp(&remainder(a))
            .then_with(|| counts[a].0.cmp(counts[b].0))
    });
    // `left` is below the number of non-zero remainders: each of those gets at most one more.
    for i in order {
        if left == 0 || remainder(i) == 0 {
            break;
        }
        parts[i] += 1;
        left -= 1;
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn load(weight: f64, connections: i64) -> Load {
        Load {
            weight,
            connections,
            available: true,
        }
    }

    #[test]
    fn fair_shares_follow_weights_and_tolerance() {
        // (loads, tolerance) -> (excess, balanced, imbalance)
        type Case = (Vec<Load>, f64, Vec<u64>, bool, f64);
        let cases: Vec<Case> = vec![
            // 40 / 0 after a walk: 20 to move, half the connections misplaced.
            (
                vec![load(1.0, 40), load(1.0, 0)],
                0.1,
                vec![20, 0],
                false,
                0.5,
            ),
            // Within 10 %: 22 / 18 stays.
            (
                vec![load(1.0, 22), load(1.0, 18)],
                0.1,
                vec![0, 0],
                true,
                0.05,
            ),
            // 23 / 17 is out: back to 20.
            (
                vec![load(1.0, 23), load(1.0, 17)],
                0.1,
                vec![3, 0],
                false,
                0.075,
            ),
            // Weights 2:1 of 30: fair 20 / 10.
            (
                vec![load(2.0, 10), load(1.0, 20)],
                0.1,
                vec![0, 10],
                false,
                1.0 / 3.0,
            ),
            // A few connections are never an imbalance: 2 / 1 / 0 has fair 1 each, allowed 2.
            (
                vec![load(1.0, 2), load(1.0, 1), load(1.0, 0)],
                0.1,
                vec![0, 0, 0],
                true,
                1.0 / 3.0,
            ),
            // No connections: balanced.
            (vec![load(1.0, 0), load(1.0, 0)], 0.1, vec![0, 0], true, 0.0),
            // A backup (weight 0 while primaries are up) gives back everything.
            (
                vec![load(1.0, 0), load(1.0, 0), load(0.0, 6)],
                0.1,
                vec![0, 0, 6],
                false,
                1.0,
            ),
            // Slow start: a returning backend at half its weight has a third of the share.
            (
                vec![load(1.0, 30), load(0.5, 0)],
                0.1,
                vec![10, 0],
                false,
                1.0 / 3.0,
            ),
            // Tolerance 0: any excess above the rounded-up share moves.
            (
                vec![load(1.0, 21), load(1.0, 19)],
                0.0,
                vec![1, 0],
                false,
                0.025,
            ),
        ];
        for (loads, tolerance, excess, balanced, imbalance) in cases {
            let p = plan(&loads, tolerance);
            assert_eq!(p.excess, excess, "{loads:?}");
            assert_eq!(p.balanced, balanced, "{loads:?}");
            assert!(
                (p.imbalance - imbalance).abs() < 1e-9,
                "{loads:?}: {}",
                p.imbalance
            );
        }
    }

    #[test]
    fn backends_that_take_no_new_connections_are_left_out() {
        let drained = Load {
            weight: 1.0,
            connections: 50,
            available: false,
        };
        let p = plan(&[load(1.0, 10), load(1.0, 10), drained], 0.1);
        assert_eq!(p.excess, vec![0, 0, 0]);
        assert!(p.balanced);
        assert_eq!(p.imbalance, 0.0);
    }

    #[test]
    fn closes_are_paced_at_the_rate_with_jitter_across_rounds() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let start = Instant::now();
        let mut pacer = Pacer::default();
        let (rate, horizon) = (4.0, Duration::from_secs(1));
        let mut all = Vec::new();
        for round in 0..10 {
            let now = start + Duration::from_secs(round);
            let slots = pacer.slots(now, 100, rate, horizon, &mut rng);
            assert!(slots.iter().all(|s| *s >= now && *s < now + horizon));
            all.extend(slots);
        }
        let min_gap = Duration::from_secs_f64(1.0 / rate);
        for pair in all.windows(2) {
            let gap = pair[1] - pair[0];
            assert!(gap >= min_gap, "{gap:?}");
            assert!(gap < min_gap.mul_f64(1.5), "{gap:?}");
        }
        // At most `rate` in any one-second window, and jitter makes the gaps differ.
        for (i, first) in all.iter().enumerate() {
            let within = all[i..]
                .iter()
                .take_while(|s| **s < *first + Duration::from_secs(1))
                .count();
            assert!(within as f64 <= rate, "{within} closes in a second");
        }
        let gaps: Vec<_> = all.windows(2).map(|p| p[1] - p[0]).collect();
        assert!(gaps.iter().any(|g| *g != gaps[0]));
        // A slow rate: one close every 5 s at most, even when asked each second.
        let mut slow = Pacer::default();
        let taken: usize = (0..10)
            .map(|s| {
                let now = start + Duration::from_secs(s);
                slow.slots(now, 10, 0.2, horizon, &mut rng).len()
            })
            .sum();
        assert!((1..=2).contains(&taken), "{taken}");
        // Nothing wanted: nothing handed out, and the next round is not pushed back.
        let mut idle = Pacer::default();
        assert!(idle.slots(start, 0, rate, horizon, &mut rng).is_empty());
        assert_eq!(idle.slots(start, 1, rate, horizon, &mut rng), vec![start]);
    }

    #[test]
    fn slots_go_to_the_backends_with_the_most_excess() {
        let t0 = Instant::now();
        let slots: Vec<Instant> = (0..5)
            .map(|i| t0 + Duration::from_millis(i * 200))
            .collect();
        let shares = share_out(&slots, &[3, 0, 1]);
        assert_eq!(shares[0].len(), 3);
        assert!(shares[1].is_empty());
        assert_eq!(shares[2].len(), 1);
        // The first slot goes to the largest excess; ties to the first backend.
        assert_eq!(shares[0][0], t0);
        assert_eq!(
            share_out(&slots[..2], &[1, 1]),
            vec![vec![t0], vec![slots[1]]]
        );
    }

    #[test]
    fn the_fleet_excess_is_shared_by_each_instance_count_and_name() {
        // (excess, counts) -> parts
        type Case = (u64, Vec<(&'static str, i64)>, Vec<u64>);
        let cases: Vec<Case> = vec![
            // Three instances, one connection each, two to move: the first two by name.
            (2, vec![("c", 1), ("a", 1), ("b", 1)], vec![0, 1, 1]),
            // 30 / 30 / 30 on one backend, 60 to move: 20 each.
            (60, vec![("a", 30), ("b", 30), ("c", 30)], vec![20, 20, 20]),
            // By count: 45 of 90 from 60 / 20 / 10 is 30 / 10 / 5.
            (45, vec![("a", 60), ("b", 20), ("c", 10)], vec![30, 10, 5]),
            // Largest remainder: 5 of 3 / 3 / 1 is 2.14 / 2.14 / 0.71 -> 2 / 2 / 1.
            (5, vec![("a", 3), ("b", 3), ("c", 1)], vec![2, 2, 1]),
            // 1 of 2 / 1: the larger remainder wins over the name.
            (1, vec![("a", 1), ("b", 2)], vec![0, 1]),
            // An instance without connections there closes none of them.
            (3, vec![("a", 0), ("b", 5), ("c", 1)], vec![0, 3, 0]),
            // More than the counts hold: each at most its count.
            (9, vec![("a", 2), ("b", 1)], vec![2, 1]),
            // Nothing held (or a negative count during a race): nothing to share.
            (4, vec![("a", 0), ("b", -1)], vec![0, 0]),
            (0, vec![("a", 7)], vec![0]),
        ];
        for (excess, counts, parts) in cases {
            let got = allocate(excess, &counts);
            assert_eq!(got, parts, "{excess} of {counts:?}");
            let held: i64 = counts.iter().map(|c| c.1.max(0)).sum();
            assert_eq!(got.iter().sum::<u64>(), excess.min(held as u64));
        }
        // The same counts in any order give each instance the same part.
        let a = allocate(2, &[("a", 1), ("b", 1), ("c", 1)]);
        let b = allocate(2, &[("c", 1), ("b", 1), ("a", 1)]);
        assert_eq!(a, vec![1, 1, 0]);
        assert_eq!(b, vec![0, 1, 1]);
    }
}
