//! Metrics in the Prometheus text format (`GET /metrics`).
//!
//! A deliberately small registry: named counters and gauges with labels,
//! each described once in [`FAMILIES`]. The pipeline adds its per-event
//! counts in batches (once per tick), so the hot path never takes this
//! lock; sinks count their deliveries as they happen.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Every metric: name, type, help.
pub const FAMILIES: &[(&str, &str, &str)] = &[
    ("cep_events_in_total", "counter", "Records read, per topic."),
    (
        "cep_decode_errors_total",
        "counter",
        "Records dead-lettered as malformed, per topic.",
    ),
    (
        "cep_repartition_repeats_total",
        "counter",
        "Re-produced records of a repartitioned input read again and skipped, per internal topic.",
    ),
    (
        "cep_late_events_total",
        "counter",
        "Events older than their partition's watermark, per stream.",
    ),
    (
        "cep_alerts_total",
        "counter",
        "Alerts emitted, per pattern and kind (match or timeout).",
    ),
    (
        "cep_shadow_alerts_total",
        "counter",
        "Alerts of shadow patterns (counted, never emitted).",
    ),
    (
        "cep_active_runs",
        "gauge",
        "Partial matches alive, per pattern.",
    ),
    (
        "cep_active_keys",
        "gauge",
        "Keys with state (live partial matches or per-key history), per pattern.",
    ),
    (
        "cep_runs_dropped_total",
        "counter",
        "Runs dropped by max_runs_per_key, per pattern.",
    ),
    (
        "cep_history_evictions_total",
        "counter",
        "Values a `seen in` forgot at its per-key cap (256), per pattern: such a value reads as not seen if it returns.",
    ),
    (
        "cep_watermark_lag_seconds",
        "gauge",
        "Wall clock minus the partition's watermark.",
    ),
    (
        "cep_consumer_lag",
        "gauge",
        "Records between the committed position and the end, per partition.",
    ),
    (
        "cep_sink_successes_total",
        "counter",
        "Deliveries acknowledged, per sink.",
    ),
    (
        "cep_sink_retries_total",
        "counter",
        "Delivery attempts retried, per sink.",
    ),
    (
        "cep_sink_failures_total",
        "counter",
        "Deliveries given up and dead-lettered, per sink.",
    ),
    (
        "cep_outputs_outstanding",
        "gauge",
        "Outputs handed to sinks and not yet acknowledged.",
    ),
    (
        "cep_checkpoints_total",
        "counter",
        "Checkpoints written and committed, by kind (whole, changes).",
    ),
    (
        "cep_rebalances_total",
        "counter",
        "Partition assignments received.",
    ),
    (
        "cep_tasks",
        "gauge",
        "Tasks (input partition numbers) this instance owns.",
    ),
    (
        "cep_checkpoint_bytes",
        "gauge",
        "Size of each task's last checkpoint written to the state topic.",
    ),
    (
        "cep_draining_runs",
        "gauge",
        "Open runs of an older pattern version replaced in drain mode, per pattern and version.",
    ),
    (
        "cep_state_bytes",
        "gauge",
        "Size of each task's chain in the state topic (what a restore reads).",
    ),
];

type Labels = Vec<(String, String)>;

#[derive(Default)]
pub struct Metrics {
    values: Mutex<BTreeMap<&'static str, BTreeMap<Labels, f64>>>,
    /// Counters bumped on hot paths: a handle each, no lock per increment.
    counters: Mutex<BTreeMap<&'static str, BTreeMap<Labels, Arc<AtomicU64>>>>,
}

/// A counter registered once and bumped without locking.
#[derive(Clone, Debug)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// The delivery counters of one sink.
#[derive(Clone, Debug)]
pub struct SinkCounters {
    pub successes: Counter,
    pub retries: Counter,
    pub failures: Counter,
}

fn labels(l: &[(&str, &str)]) -> Labels {
    l.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics::default()
    }

    pub fn add(&self, name: &'static str, l: &[(&str, &str)], by: f64) {
        let mut g = self.values.lock().expect("metrics lock");
        *g.entry(name).or_default().entry(labels(l)).or_default() += by;
    }

    pub fn inc(&self, name: &'static str, l: &[(&str, &str)]) {
        self.add(name, l, 1.0);
    }

    /// The counter `name{l}`, registered on first use.
    pub fn counter(&self, name: &'static str, l: &[(&str, &str)]) -> Counter {
        let mut g = self.counters.lock().expect("metrics lock");
        Counter(
            g.entry(name)
                .or_default()
                .entry(labels(l))
                .or_default()
                .clone(),
        )
    }

    pub fn sink(&self, sink: &str) -> SinkCounters {
        let l = [("sink", sink)];
        SinkCounters {
            successes: self.counter("cep_sink_successes_total", &l),
            retries: self.counter("cep_sink_retries_total", &l),
            failures: self.counter("cep_sink_failures_total", &l),
        }
    }

    pub fn set(&self, name: &'static str, l: &[(&str, &str)], v: f64) {
        let mut g = self.values.lock().expect("metrics lock");
        g.entry(name).or_default().insert(labels(l), v);
    }

    /// Forgets every series of a gauge (e.g. partitions no longer
    /// assigned) before it is set afresh.
    pub fn clear(&self, name: &'static str) {
        self.values.lock().expect("metrics lock").remove(name);
    }

    /// One value, for tests and the pipeline's own checks.
    pub fn get(&self, name: &str, l: &[(&str, &str)]) -> f64 {
        let l = labels(l);
        let plain = {
            let g = self.values.lock().expect("metrics lock");
            g.get(name).and_then(|m| m.get(&l)).copied().unwrap_or(0.0)
        };
        let c = self.counters.lock().expect("metrics lock");
        plain
            + c.get(name)
                .and_then(|m| m.get(&l))
                .map_or(0.0, |v| v.load(Ordering::Relaxed) as f64)
    }

    pub fn render(&self) -> String {
        let mut g = self.values.lock().expect("metrics lock").clone();
        for (name, series) in self.counters.lock().expect("metrics lock").iter() {
            let m = g.entry(name).or_default();
            for (l, v) in series {
                *m.entry(l.clone()).or_default() += v.load(Ordering::Relaxed) as f64;
            }
        }
        let mut s = String::new();
        for (name, kind, help) in FAMILIES {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}");
            let Some(series) = g.get(name) else { continue };
            for (l, v) in series {
                s.push_str(name);
                if !l.is_empty() {
                    s.push('{');
                    for (n, (k, val)) in l.iter().enumerate() {
                        if n > 0 {
                            s.push(',');
                        }
                        let val = val
                            .replace('\\', "\\\\")
                            .replace('"', "\\\"")
                            .replace('\n', "\\n");
                        let _ = write!(s, "{k}=\"{val}\"");
                    }
                    s.push('}');
                }
                let _ = writeln!(s, " {v}");
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_text_format_with_escaped_labels() {
        let m = Metrics::new();
        m.inc("cep_events_in_total", &[("topic", "cards")]);
        m.add("cep_events_in_total", &[("topic", "cards")], 2.0);
        m.set("cep_active_runs", &[("pattern", "a\"b")], 7.0);
        let text = m.render();
        assert!(text.contains("# TYPE cep_events_in_total counter\n"));
        assert!(
            text.contains("cep_events_in_total{topic=\"cards\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("cep_active_runs{pattern=\"a\\\"b\"} 7\n"),
            "{text}"
        );
        assert_eq!(m.get("cep_events_in_total", &[("topic", "cards")]), 3.0);
        let c = m.counter("cep_sink_successes_total", &[("sink", "k")]);
        c.inc();
        c.inc();
        assert!(m
            .render()
            .contains("cep_sink_successes_total{sink=\"k\"} 2\n"));
        assert_eq!(m.get("cep_sink_successes_total", &[("sink", "k")]), 2.0);
    }
}
