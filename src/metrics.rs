//! Prometheus plumbing that the modules owning metrics share: the process's [`Registry`]
//! wrapped in [`Metrics`] with the families that belong to no component (`build_info`, the
//! process collector), the helpers every owner declares its families with (the `warren_`
//! namespace, the buckets, registration that fails only on a name clash), and the text
//! exposition `/metrics` serves. Each other family is declared and registered by the module
//! that counts it (`proxy::metrics`, `state::BackendMetrics`, `health::metrics`, `hooks`,
//! `drain`, `admin::metrics`, `logging`, and `server` for reloads), with enum labels; `server`
//! registers them all once per process into one registry. A leaf: it names no other module of
//! warren and does no I/O.

use prometheus::core::Collector;
use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// The process's registry: what `/metrics` encodes. Cheap to share behind an `Arc`.
pub struct Metrics {
    registry: Registry,
    /// What an upgraded-from process had counted ([`Metrics::carry`]): added to the same
    /// series at every exposition, so counters continue across an upgrade of warren.
    carried: std::sync::Mutex<Vec<CounterSample>>,
}

/// One counter series' value: a family name, its labels (sorted by name) and the value.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CounterSample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Metrics {
    /// A registry holding `build_info` and (on Linux) the process collector; the components'
    /// families are registered into it by their owners (see the module docs).
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let build_info = gauge_vec(
            &registry,
            "build_info",
            "warren build information; value is always 1",
            &["version"],
        );
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("process collector registers once");
        Metrics {
            registry,
            carried: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// Where the owners register their families.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The Prometheus text exposition of every registered family, carried counters added.
    pub fn encode(&self) -> String {
        let mut families = self.registry.gather();
        add_carried(&mut families, &self.carried());
        encode_families(&families)
    }

    /// Every `warren_` counter series and its value as exposed now (carried values included):
    /// what an upgrade hands to the new process. The process collector's own counters (CPU
    /// seconds) describe this process and start again in the next.
    pub fn counters(&self) -> Vec<CounterSample> {
        let mut families = self.registry.gather();
        add_carried(&mut families, &self.carried());
        let mut samples = Vec::new();
        for family in &families {
            if family.get_field_type() != prometheus::proto::MetricType::COUNTER
                || !family.get_name().starts_with("warren_")
            {
                continue;
            }
            for metric in family.get_metric() {
                samples.push(CounterSample {
                    name: family.get_name().to_owned(),
                    labels: labels_of(metric),
                    value: metric.get_counter().get_value(),
                });
            }
        }
        samples
    }

    /// Continue from an upgraded-from process's counters: each is added to the series of the
    /// same name and labels from now on (a series this process has not counted yet appears
    /// with the carried value). Replaces what an earlier call carried.
    pub fn carry(&self, samples: Vec<CounterSample>) {
        *self.carried.lock().unwrap_or_else(|e| e.into_inner()) = samples;
    }

    fn carried(&self) -> Vec<CounterSample> {
        self.carried
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// A series' labels, sorted by name (as the registry keeps them).
fn labels_of(metric: &prometheus::proto::Metric) -> Vec<(String, String)> {
    metric
        .get_label()
        .iter()
        .map(|l| (l.get_name().to_owned(), l.get_value().to_owned()))
        .collect()
}

/// Add each carried sample to its series in `families`; a series not there yet is added to
/// its family. A sample whose family is not registered (a metric this build dropped) is left
/// out.
fn add_carried(families: &mut [prometheus::proto::MetricFamily], carried: &[CounterSample]) {
    for sample in carried {
        let Some(family) = families.iter_mut().find(|f| {
            f.get_name() == sample.name
                && f.get_field_type() == prometheus::proto::MetricType::COUNTER
        }) else {
            continue;
        };
        let series = family
            .mut_metric()
            .iter_mut()
            .find(|m| labels_of(m) == sample.labels);
        match series {
            Some(metric) => {
                let mut counter = prometheus::proto::Counter::default();
                counter.set_value(metric.get_counter().get_value() + sample.value);
                metric.set_counter(counter);
            }
            None => {
                let mut metric = prometheus::proto::Metric::default();
                let mut labels = Vec::with_capacity(sample.labels.len());
                for (name, value) in &sample.labels {
                    let mut pair = prometheus::proto::LabelPair::default();
                    pair.set_name(name.clone());
                    pair.set_value(value.clone());
                    labels.push(pair);
                }
                metric.set_label(labels);
                let mut counter = prometheus::proto::Counter::default();
                counter.set_value(sample.value);
                metric.set_counter(counter);
                family.mut_metric().push(metric);
            }
        }
    }
}

/// The Prometheus text exposition of `registry`'s families.
pub fn encode(registry: &Registry) -> String {
    encode_families(&registry.gather())
}

fn encode_families(families: &[prometheus::proto::MetricFamily]) -> String {
    use prometheus::Encoder;
    let mut buf = Vec::new();
    prometheus::TextEncoder::new()
        .encode(families, &mut buf)
        .expect("text encoding into a Vec cannot fail");
    String::from_utf8(buf).expect("the text format is UTF-8")
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Connects on a LAN take 0.1–5 ms; timeouts are seconds. Buckets cover both ends (backend
/// connects and health probes).
pub const CONNECT_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A metric's options in the `warren_` namespace.
pub fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help).namespace("warren")
}

/// Register `collector` and hand it back. Panics only on a programming error: a name
/// registered twice in one registry (families are registered once per process).
pub fn register<C: Collector + Clone + 'static>(registry: &Registry, collector: C) -> C {
    registry
        .register(Box::new(collector.clone()))
        .expect("metric names are unique");
    collector
}

/// A registered counter family `warren_{name}` with these label names.
pub fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(
        registry,
        IntCounterVec::new(opts(name, help), labels).expect("a valid metric name"),
    )
}

/// A registered gauge family `warren_{name}` with these label names.
pub fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    register(
        registry,
        IntGaugeVec::new(opts(name, help), labels).expect("a valid metric name"),
    )
}

/// A registered gauge family `warren_{name}` of fractions (not counts).
pub fn float_gauge_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::GaugeVec {
    register(
        registry,
        prometheus::GaugeVec::new(opts(name, help), labels).expect("a valid metric name"),
    )
}

/// A registered histogram family `warren_{name}` with these buckets and label names.
pub fn histogram_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    buckets: &[f64],
    labels: &[&str],
) -> HistogramVec {
    let opts = HistogramOpts::new(name, help)
        .namespace("warren")
        .buckets(buckets.to_vec());
    register(
        registry,
        HistogramVec::new(opts, labels).expect("a valid metric name"),
    )
}

/// A registered counter `warren_{name}` without labels.
pub fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    register(
        registry,
        IntCounter::with_opts(opts(name, help)).expect("a valid metric name"),
    )
}

/// A registered gauge `warren_{name}` without labels.
pub fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    register(
        registry,
        IntGauge::with_opts(opts(name, help)).expect("a valid metric name"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn carried_counters_continue_and_missing_series_appear() {
        let metrics = Metrics::new();
        let total = counter_vec(metrics.registry(), "t_total", "t", &["listener"]);
        total.with_label_values(&["amqp"]).inc_by(3);
        let mut before = Metrics::new();
        let old = counter_vec(before.registry(), "t_total", "t", &["listener"]);
        old.with_label_values(&["amqp"]).inc_by(10);
        old.with_label_values(&["tls"]).inc_by(4);
        let carried = std::mem::take(&mut before).counters();
        assert_eq!(carried.len(), 2, "{carried:?}");
        metrics.carry(carried);
        let text = metrics.encode();
        assert!(
            text.contains("warren_t_total{listener=\"amqp\"} 13"),
            "{text}"
        );
        assert!(
            text.contains("warren_t_total{listener=\"tls\"} 4"),
            "{text}"
        );
        // Handed on again, the carried values are part of what this process counted.
        let again: f64 = metrics.counters().iter().map(|s| s.value).sum();
        assert_eq!(again, 17.0);
    }

    #[test]
    fn a_new_registry_holds_build_info_and_encodes_it() {
        let text = Metrics::new().encode();
        let line = format!(
            "warren_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        assert!(text.lines().any(|l| l == line), "{text}");
    }

    #[test]
    #[should_panic(expected = "metric names are unique")]
    fn a_family_registered_twice_is_a_programming_error() {
        let (registry, name) = (Registry::new(), "twice_total");
        counter(&registry, name, "Registered twice");
        counter(&registry, name, "Registered twice");
    }
}
