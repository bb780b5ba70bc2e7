//! Reading warren's metrics in tests: one series out of a Prometheus text exposition (strict
//! unless absence is expected), and the exposition from the admin API's `/metrics`.

use std::net::SocketAddr;

use super::http;

/// Find `series` (name with labels exactly as exported) in a Prometheus text exposition.
/// Panics when the series is absent, naming it and listing the exported series of the same
/// family, so a renamed or missing series cannot pass as 0. Where absence is really expected,
/// use [`metric_or_zero`] or [`metric_opt`].
pub fn metric_value(text: &str, series: &str) -> f64 {
    match metric_opt(text, series) {
        Some(v) => v,
        None => {
            let family = series.split('{').next().unwrap_or(series);
            let similar: Vec<&str> = text
                .lines()
                .filter(|l| !l.starts_with('#'))
                .filter_map(|l| l.rsplit_once(' ').map(|(name, _)| name))
                .filter(|name| name.split('{').next() == Some(family))
                .collect();
            panic!(
                "metric series {series} is not exported; series of {family}: {}",
                if similar.is_empty() {
                    "none".to_string()
                } else {
                    similar.join(", ")
                }
            )
        }
    }
}

/// `series`'s value, or `None` when it is not exported.
pub fn metric_opt(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok())?
    })
}

/// `series`'s value, 0 when it is not exported: only where absence is expected (a labelled
/// counter that has not counted yet, a series a reload removed).
pub fn metric_or_zero(text: &str, series: &str) -> f64 {
    metric_opt(text, series).unwrap_or(0.0)
}

/// warren's `/metrics` text from the admin API at `admin`; panics unless it answers 200.
pub async fn scrape_metrics(admin: SocketAddr) -> String {
    let (code, body) = http(admin, "GET", "/metrics", None, b"").await;
    assert_eq!(code, 200, "GET /metrics: {body}");
    body
}

/// One series' value in the admin API's `/metrics`; panics when it is absent (see
/// [`metric_value`]).
pub async fn admin_metric(admin: SocketAddr, series: &str) -> f64 {
    metric_value(&scrape_metrics(admin).await, series)
}
