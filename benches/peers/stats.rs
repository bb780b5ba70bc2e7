//! Measurement bookkeeping: every value by (metric, target, round), medians over rounds,
//! ratios taken inside a round, nearest-rank percentiles, and how a number or a verdict is
//! written in a table cell.

use std::collections::HashMap;

use crate::Balancer;

/// Every value of the run.
#[derive(Default)]
pub struct Results {
    pub rounds: usize,
    /// (metric, target) → one value per round.
    pub data: HashMap<(String, Balancer), Vec<Option<f64>>>,
    pub notes: Vec<String>,
    /// 1-minute load average at the start of each round: other work on the machine.
    pub loads: Vec<String>,
}

impl Results {
    /// Record `v` for `key` and `t` in `round`.
    pub fn put(&mut self, key: &str, t: Balancer, round: usize, v: f64) {
        let rounds = self.rounds;
        let e = self
            .data
            .entry((key.to_string(), t))
            .or_insert_with(|| vec![None; rounds]);
        e[round] = Some(v);
    }

    /// The values of `key` and `t`, rounds without one left out.
    pub fn values(&self, key: &str, t: Balancer) -> Vec<f64> {
        self.data
            .get(&(key.to_string(), t))
            .map(|v| v.iter().flatten().copied().collect())
            .unwrap_or_default()
    }

    /// The values of `key` and `t`, one per round.
    pub fn per_round(&self, key: &str, t: Balancer) -> Vec<Option<f64>> {
        self.data
            .get(&(key.to_string(), t))
            .cloned()
            .unwrap_or_else(|| vec![None; self.rounds])
    }

    /// Median over rounds of f(values of the targets in that round), rounds with all values only.
    pub fn round_median(
        &self,
        key: &str,
        ts: &[Balancer],
        f: impl Fn(&[f64]) -> f64,
    ) -> Option<f64> {
        let cols: Vec<Vec<Option<f64>>> = ts.iter().map(|&t| self.per_round(key, t)).collect();
        let vals: Vec<f64> = (0..self.rounds)
            .filter_map(|r| {
                let row: Option<Vec<f64>> = cols.iter().map(|c| c[r]).collect();
                row.map(|row| f(&row))
            })
            .collect();
        median(&vals)
    }

    /// warren ÷ `peer` in each round, the median over rounds.
    pub fn ratio(&self, key: &str, peer: Balancer) -> Option<f64> {
        self.round_median(key, &[Balancer::Warren, peer], |v| v[0] / v[1])
    }
}

/// The median; `None` of nothing.
pub fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let m = s.len() / 2;
    Some(if s.len() % 2 == 1 {
        s[m]
    } else {
        (s[m - 1] + s[m]) / 2.0
    })
}

/// A number with 3 to 4 significant digits (at least its integer part).
pub fn fmt_num(x: f64) -> String {
    let a = x.abs();
    if a >= 1000.0 {
        format!("{x:.0}")
    } else if a >= 100.0 {
        format!("{x:.1}")
    } else if a >= 10.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

/// A table cell: "median (min–max)" over rounds, or "–" with no value.
pub fn cell(res: &Results, key: &str, t: Balancer) -> String {
    let v = res.values(key, t);
    match median(&v) {
        None => "–".into(),
        Some(m) => {
            let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            format!("{} ({}–{})", fmt_num(m), fmt_num(lo), fmt_num(hi))
        }
    }
}

/// [`fmt_num`], or nothing when there is no number.
pub fn opt_num(x: Option<f64>) -> String {
    x.map(fmt_num).unwrap_or_default()
}

/// The cells of `key` for these targets, joined as table columns.
pub fn cells(res: &Results, key: &str, targets: &[Balancer]) -> String {
    targets
        .iter()
        .map(|&t| cell(res, key, t))
        .collect::<Vec<_>>()
        .join(" | ")
}

/// A target's verdict as the report writes it.
pub fn verdict(ok: Option<bool>) -> &'static str {
    match ok {
        Some(true) => "**met**",
        Some(false) => "**missed**",
        None => "n/a",
    }
}

/// The nearest-rank `p` percentile (0 < `p` ≤ 1) of sorted, non-empty `sorted`.
pub fn nearest_rank(sorted: &[f64], p: f64) -> f64 {
    sorted[((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1]
}
