//! This instance's part of a fleet-wide move (`[fleet]`): the fleet's counts are taken once,
//! when the part starts (the same reports every instance reads, so every instance computes the
//! same split of the excess, see [`plan::allocate`]), and the part is recomputed each round
//! from those counts and the backends' availability and weights as they are now (a second
//! backend returning mid-way grows the excess; it never makes the counts move under the
//! split), less the slots this instance's connections already took. Replanning on the live
//! counts instead would read the other instances' closes only a report later and close them
//! again (the fleet would close its excess once per instance per report interval). Once the
//! part is done it waits for the reports to show everyone's closes ([`FleetLoads::settle`])
//! before the rebalancer takes a new one. No I/O, no clock of its own.
//!
//! [`FleetLoads::settle`]: super::fleet::FleetLoads::settle

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use super::plan::{self, Load};
use crate::state::Shed;

/// One backend's connections per instance, at the start of a part.
pub type Counts = HashMap<Arc<str>, Vec<(String, i64)>>;

/// This instance's part of a move of the fleet's excess.
pub struct Quota {
    /// The fleet's connections when the part started, by backend.
    base: Counts,
    /// Slots this instance's connections took since, by backend.
    taken: HashMap<Arc<str>, u64>,
    /// The closes offered last round, counted at the next (by then every connection woken
    /// has taken its slot or let it pass).
    offered: Vec<(Arc<str>, Arc<Shed>)>,
    /// Everything owed was taken: a new part may start after this.
    pub settled_at: Option<Instant>,
}

/// What this instance owes now.
#[derive(Debug, PartialEq)]
pub struct Owed {
    /// Closes still to make per backend (in the pool's order).
    pub per_backend: Vec<u64>,
    /// This instance's whole part, taken or not.
    pub mine: u64,
    /// The fleet's whole excess.
    pub fleet: u64,
}

impl Owed {
    /// Closes still to make.
    pub fn left(&self) -> u64 {
        self.per_backend.iter().sum()
    }
}

impl Quota {
    pub fn new(base: Counts) -> Quota {
        Quota {
            base,
            taken: HashMap::new(),
            offered: Vec::new(),
            settled_at: None,
        }
    }

    /// Count the slots taken from the last round's offers.
    pub fn account(&mut self) {
        for (backend, shed) in self.offered.drain(..) {
            *self.taken.entry(backend).or_default() += shed.taken() as u64;
        }
    }

    /// Closes offered to `backend` this round.
    pub fn offered(&mut self, backend: Arc<str>, shed: Arc<Shed>) {
        self.offered.push((backend, shed));
    }

    /// What instance `me` owes, the pool's `backends` weighing and available as in `now_loads`
    /// (their connections are not read: the counts are the base's).
    pub fn owed(
        &self,
        me: &str,
        backends: &[Arc<str>],
        now_loads: &[Load],
        tolerance: f64,
    ) -> Owed {
        let none = Vec::new();
        let counts: Vec<&Vec<(String, i64)>> = backends
            .iter()
            .map(|b| self.base.get(b).unwrap_or(&none))
            .collect();
        let loads: Vec<Load> = now_loads
            .iter()
            .zip(&counts)
            .map(|(load, counts)| Load {
                connections: counts.iter().map(|(_, n)| (*n).max(0)).sum(),
                ..*load
            })
            .collect();
        let planned = plan::plan(&loads, tolerance);
        let mut owed = Owed {
            per_backend: Vec::with_capacity(backends.len()),
            mine: 0,
            fleet: planned.excess.iter().sum(),
        };
        for ((backend, counts), excess) in backends.iter().zip(&counts).zip(&planned.excess) {
            let named: Vec<(&str, i64)> = counts.iter().map(|(i, n)| (i.as_str(), *n)).collect();
            let parts = plan::allocate(*excess, &named);
            let part = named
                .iter()
                .zip(parts)
                .find(|((instance, _), _)| *instance == me)
                .map_or(0, |(_, part)| part);
            let taken = self.taken.get(backend).copied().unwrap_or(0);
            owed.mine += part;
            owed.per_backend.push(part.saturating_sub(taken));
        }
        owed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base(counts: &[(&str, &[(&str, i64)])]) -> Counts {
        counts
            .iter()
            .map(|(backend, by)| {
                let by = by.iter().map(|(i, n)| ((*i).to_owned(), *n)).collect();
                (Arc::from(*backend), by)
            })
            .collect()
    }

    fn available(n: usize, up: &[bool]) -> Vec<Load> {
        (0..n)
            .map(|i| Load {
                weight: 1.0,
                connections: 0,
                available: up[i],
            })
            .collect()
    }

    #[test]
    fn each_instance_owes_its_part_and_a_later_return_grows_it_from_the_same_counts() {
        let names: Vec<Arc<str>> = ["x", "y", "z"].map(Arc::from).to_vec();
        let counts = base(&[("x", &[("a", 30), ("b", 30), ("c", 30)])]);
        let mut quota = Quota::new(counts);
        // y is back, z not yet: 45 of x's 90 move, 15 from each instance.
        let two = available(3, &[true, true, false]);
        let owed = quota.owed("b", &names, &two, 0.1);
        assert_eq!(
            owed,
            Owed {
                per_backend: vec![15, 0, 0],
                mine: 15,
                fleet: 45
            }
        );
        // Ten slots taken; then z returns: 60 move, 20 each, 10 still owed.
        let shed = Arc::new(Shed::new(vec![Instant::now(); 10], Instant::now()));
        for _ in 0..12 {
            shed.take(Instant::now() - std::time::Duration::from_secs(1));
        }
        quota.offered(names[0].clone(), shed);
        quota.account();
        let three = available(3, &[true, true, true]);
        let owed = quota.owed("b", &names, &three, 0.1);
        assert_eq!(owed.per_backend, vec![10, 0, 0]);
        assert_eq!((owed.mine, owed.fleet, owed.left()), (20, 60, 10));
        // An instance not in the counts owes nothing.
        assert_eq!(quota.owed("d", &names, &three, 0.1).left(), 0);
    }
}
