//! What `zester up` measures for Prometheus (`[metrics] listen`, `zester up --metrics`): the
//! `zester_*` metrics, their labels, and their text encoding. No I/O here: [`scrape`] serves
//! the result over HTTP, and `up` supplies the live readings.
//!
//! Two kinds of numbers, kept apart because they come from different places:
//! - **events**, counted as they happen from the one record every decision leaves anyway, its
//!   [`AuditRecord`] ([`Metrics::observe`]): connection decisions by source, decision, code and
//!   role with their latency, and the results of enrolment, renewal and rotation requests. An
//!   audit record carries all those fields, so counting it in one place keeps the metrics and
//!   the audit log telling the same story (a record the audit queue drops is still counted);
//! - **states**, read at each scrape from where they already live ([`Live::read`]): the session
//!   table, the key cache, the supervisor's restart count, the callout's shed counter, the audit
//!   sink's dropped counter and the soonest expiry per credential kind. Nothing is mirrored, so
//!   nothing can drift.
//!
//! Label values are bounded sets (sources, decisions, the stable refusal codes, role names and
//! key states): never a peel id, a key or an address, so the number of series does not grow
//! with the fleet. Names follow the Prometheus naming guide: `zester_` prefix, the unit as a
//! suffix (`_seconds`), counters ending in `_total` (the encoder adds it).
//!
//! [`scrape`]: super::scrape

use std::sync::{Arc, OnceLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::appliance::callout::audit::{AuditRecord, Source, Verdict};
use crate::wire::expiry::CredentialKind;
use crate::wire::record::KeyState;

/// Upper bounds of the decision latency buckets, seconds: a decision from memory takes about a
/// millisecond (signing included); under a reconnect storm requests queue for seconds, up to
/// the point the callout sheds them (`callout::service::SHED_AFTER`, 8 s).
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// The Prometheus text format (version 0.0.4), served unless the scraper asks for OpenMetrics.
pub const PROMETHEUS_TEXT: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;
/// The OpenMetrics text format, served when the scraper's `Accept` names it (Prometheus does).
pub const OPENMETRICS_TEXT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Which text format a scrape gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `text/plain; version=0.0.4`.
    PrometheusText,
    /// `application/openmetrics-text; version=1.0.0`.
    OpenMetrics,
}

impl Format {
    /// The format for a request's `Accept` header: OpenMetrics when it is named (Prometheus
    /// names it first since 2.x), the classic text format for everything else (curl, `*/*`).
    pub fn from_accept(accept: Option<&str>) -> Format {
        match accept {
            Some(accept)
                if accept
                    .split(',')
                    .map(|part| part.split(';').next().unwrap_or_default().trim())
                    .any(|media| media.eq_ignore_ascii_case("application/openmetrics-text")) =>
            {
                Format::OpenMetrics
            }
            _ => Format::PrometheusText,
        }
    }

    /// Its `Content-Type`.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::PrometheusText => PROMETHEUS_TEXT,
            Format::OpenMetrics => OPENMETRICS_TEXT,
        }
    }
}

/// The labels of `zester_auth_decisions_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DecisionLabels {
    /// `callout`, or `server` for refusals nats-server made before asking the callout.
    source: &'static str,
    /// `allow` or `refuse`.
    decision: &'static str,
    /// The stable refusal code (empty when allowed), as in the audit log.
    code: String,
    /// The role let in (empty when refused), as in the audit log.
    role: String,
}

/// The labels of the request counters (enrolments, renewals, rotations).
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ResultLabels {
    /// `ok` (acted on) or `refused`.
    result: &'static str,
    /// The audit record's code (`renewed`, `cert_renew_failed`, `enrol_stale`…; empty for an
    /// answered enrolment request).
    code: String,
}

/// One label, for the gauges read at scrape time.
type OneLabel = [(&'static str, &'static str); 1];

/// The numbers read at each scrape.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Readings {
    /// Sessions in the callout's session table (connections it let in that are still open).
    pub sessions: u64,
    /// Keys in the key cache, by state.
    pub keys: Vec<(KeyState, u64)>,
    /// How often the supervisor restarted nats-server since start.
    pub nats_server_restarts: u64,
    /// Authorization requests dropped unanswered because they waited too long.
    pub shed_requests: u64,
    /// Audit records dropped because the audit queue was full or closed.
    pub audit_records_dropped: u64,
    /// Seconds until the soonest expiry of each credential kind that has one (negative: that
    /// long ago).
    pub expires_in: Vec<(CredentialKind, i64)>,
    /// On a node of a cluster: `(known, up)`, the nodes of JetStream's meta group and those
    /// current in it (this one included); `None` on a single node.
    pub cluster_nodes: Option<(u64, u64)>,
}

/// Where the readings come from (the running appliance, or a test).
pub trait Live: Send + Sync + 'static {
    /// The numbers now.
    fn read(&self) -> Readings;
}

/// The [`Collector`] that turns [`Live::read`] into metrics at each scrape (nothing until the
/// appliance has said where to read from: the metrics count from its first audit record on,
/// before the things the readings come from exist).
struct LiveCollector(Arc<OnceLock<Arc<dyn Live>>>);

impl std::fmt::Debug for LiveCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LiveCollector")
    }
}

impl Collector for LiveCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(live) = self.0.get() else {
            return Ok(());
        };
        let readings = live.read();
        let gauge = |encoder: &mut DescriptorEncoder, name, help, value: u64| {
            let metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            ConstGauge::new(value).encode(metric)
        };
        let counter = |encoder: &mut DescriptorEncoder, name, help, value: u64| {
            let metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(value).encode(metric)
        };
        gauge(
            &mut encoder,
            "zester_sessions",
            "Connections the callouts let in that are still open (the session table: in a cluster every node's admissions).",
            readings.sessions,
        )?;
        let mut keys = encoder.encode_descriptor(
            "zester_keys",
            "Peel keys in the key store, by state.",
            None,
            MetricType::Gauge,
        )?;
        for (state, count) in &readings.keys {
            let labels: OneLabel = [("state", state.as_str())];
            ConstGauge::new(*count).encode(keys.encode_family(&labels)?)?;
        }
        counter(
            &mut encoder,
            "zester_nats_server_restarts",
            "Times the supervisor restarted the nats-server child since zester started.",
            readings.nats_server_restarts,
        )?;
        counter(
            &mut encoder,
            "zester_callout_shed_requests",
            "Authorization requests dropped unanswered because they waited in zester's queue past the point nats-server gives up on them.",
            readings.shed_requests,
        )?;
        counter(
            &mut encoder,
            "zester_audit_records_dropped",
            "Audit records not written to audit.log because the audit queue was full or closed.",
            readings.audit_records_dropped,
        )?;
        let seconds = Unit::Seconds;
        let mut expiry = encoder.encode_descriptor(
            "zester_credential_expires_in",
            "Seconds until the soonest expiry of each kind of credential zester issues or uses (negative once expired): peel identity JWTs of accepted keys, zester's own service creds, the TLS server certificate, the CA.",
            Some(&seconds),
            MetricType::Gauge,
        )?;
        for (kind, seconds) in &readings.expires_in {
            let labels: OneLabel = [("kind", kind.as_str())];
            ConstGauge::new(*seconds).encode(expiry.encode_family(&labels)?)?;
        }
        if let Some((known, up)) = readings.cluster_nodes {
            let mut nodes = encoder.encode_descriptor(
                "zester_cluster_nodes",
                "Nodes of the cluster as JetStream's meta group reports them (this node included): known, and up (current in the group)",
                None,
                MetricType::Gauge,
            )?;
            for (state, count) in [("known", known), ("up", up)] {
                let labels: OneLabel = [("state", state)];
                ConstGauge::new(count).encode(nodes.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// The registry and the event counters (their help texts have no final period: the encoder
/// adds one); shared by the audit sink (which reports every record)
/// and the `/metrics` listener.
pub struct Metrics {
    registry: Registry,
    decisions: Family<DecisionLabels, Counter>,
    decision_seconds: Histogram,
    enrolments: Family<ResultLabels, Counter>,
    renewals: Family<ResultLabels, Counter>,
    rotations: Family<ResultLabels, Counter>,
    live: Arc<OnceLock<Arc<dyn Live>>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("registry", &self.registry)
            .finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// The metrics of one appliance; the live readings come once [`Metrics::read_live`] is
    /// called.
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let decisions = Family::<DecisionLabels, Counter>::default();
        registry.register(
            "zester_auth_decisions",
            "Connection decisions: by the callout, and refusals nats-server made itself (source), by decision, refusal code and role let in",
            decisions.clone(),
        );
        let decision_seconds = Histogram::new(LATENCY_BUCKETS);
        registry.register_with_unit(
            "zester_auth_decision_duration",
            "Time the callout took to answer an authorization request, from receipt (time queued included) to the answer sent",
            Unit::Seconds,
            decision_seconds.clone(),
        );
        let results = |registry: &mut Registry, name: &str, help: &str| {
            let family = Family::<ResultLabels, Counter>::default();
            registry.register(name, help, family.clone());
            family
        };
        let enrolments = results(
            &mut registry,
            "zester_enrolments",
            "Enrolment requests and their outcomes (answered, refused by code, the policy hook's verdicts)",
        );
        let renewals = results(
            &mut registry,
            "zester_renewals",
            "Renewals of credentials (peel identity JWTs, zester's own creds, the TLS server certificate), by result and code",
        );
        let rotations = results(
            &mut registry,
            "zester_rotations",
            "Peel key rotations, by result and code",
        );
        let live = Arc::new(OnceLock::new());
        registry.register_collector(Box::new(LiveCollector(live.clone())));
        Metrics {
            registry,
            decisions,
            decision_seconds,
            enrolments,
            renewals,
            rotations,
            live,
        }
    }

    /// Reads the live numbers from `live` at each scrape from now on (the first call counts).
    pub fn read_live(&self, live: Arc<dyn Live>) {
        let _ = self.live.set(live);
    }

    /// Counts what `record` says happened (every audit record passes here once).
    pub fn observe(&self, record: &AuditRecord) {
        let result = || ResultLabels {
            result: match record.decision {
                Verdict::Allow => "ok",
                Verdict::Refuse => "refused",
            },
            code: record.code.clone(),
        };
        match record.source {
            Source::Callout | Source::Server => {
                let labels = DecisionLabels {
                    source: record.source.as_str(),
                    decision: match record.decision {
                        Verdict::Allow => "allow",
                        Verdict::Refuse => "refuse",
                    },
                    code: record.code.clone(),
                    role: record.role.clone(),
                };
                self.decisions.get_or_create(&labels).inc();
                if record.source == Source::Callout {
                    // Microseconds as an exact binary fraction of a second is not needed.
                    self.decision_seconds.observe(record.micros as f64 / 1e6);
                }
            }
            Source::Enrol => {
                self.enrolments.get_or_create(&result()).inc();
            }
            Source::Renew => {
                self.renewals.get_or_create(&result()).inc();
            }
            Source::Rotate => {
                self.rotations.get_or_create(&result()).inc();
            }
            Source::Settings | Source::Admin | Source::Status => {}
        }
    }

    /// Every metric now, in `format`.
    pub fn render(&self, format: Format) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        match format {
            Format::PrometheusText => {
                prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)?
            }
            Format::OpenMetrics => {
                prometheus_client::encoding::text::encode(&mut text, &self.registry)?
            }
        }
        Ok(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(Readings);

    impl Live for Fixed {
        fn read(&self) -> Readings {
            self.0.clone()
        }
    }

    fn metrics() -> Metrics {
        let metrics = Metrics::new();
        metrics.read_live(Arc::new(Fixed(Readings {
            sessions: 3,
            keys: vec![(KeyState::Accepted, 2), (KeyState::Revoked, 1)],
            nats_server_restarts: 1,
            shed_requests: 4,
            audit_records_dropped: 5,
            expires_in: vec![(CredentialKind::Peel, 600), (CredentialKind::Ca, -7)],
            cluster_nodes: Some((3, 2)),
        })));
        metrics
    }

    fn record(source: Source, decision: Verdict, code: &str, role: &str) -> AuditRecord {
        let mut record = AuditRecord::at(0, source, decision);
        record.code = code.into();
        record.role = role.into();
        record.micros = 1500;
        record
    }

    #[test]
    fn decisions_are_counted_by_source_decision_code_and_role() {
        let m = metrics();
        for _ in 0..3 {
            m.observe(&record(Source::Callout, Verdict::Allow, "", "peel"));
        }
        m.observe(&record(Source::Callout, Verdict::Refuse, "key_unknown", ""));
        m.observe(&record(Source::Server, Verdict::Refuse, "revoked", ""));
        m.observe(&record(Source::Renew, Verdict::Allow, "renewed", "peel"));
        m.observe(&record(
            Source::Renew,
            Verdict::Refuse,
            "cert_renew_failed",
            "",
        ));
        m.observe(&record(
            Source::Rotate,
            Verdict::Refuse,
            "rotate_refused",
            "",
        ));
        m.observe(&record(Source::Enrol, Verdict::Allow, "", "enrolling"));
        // Not counted anywhere: admin and status requests are not what the metrics are about.
        m.observe(&record(Source::Admin, Verdict::Allow, "", "admin"));
        let text = m.render(Format::PrometheusText).unwrap();
        for line in [
            "zester_auth_decisions_total{source=\"callout\",decision=\"allow\",code=\"\",role=\"peel\"} 3",
            "zester_auth_decisions_total{source=\"callout\",decision=\"refuse\",code=\"key_unknown\",role=\"\"} 1",
            "zester_auth_decisions_total{source=\"server\",decision=\"refuse\",code=\"revoked\",role=\"\"} 1",
            "zester_renewals_total{result=\"ok\",code=\"renewed\"} 1",
            "zester_renewals_total{result=\"refused\",code=\"cert_renew_failed\"} 1",
            "zester_rotations_total{result=\"refused\",code=\"rotate_refused\"} 1",
            "zester_enrolments_total{result=\"ok\",code=\"\"} 1",
            // Only the callout's own decisions have a latency: 4 of them, 1.5 ms each.
            "zester_auth_decision_duration_seconds_count 4",
            "zester_auth_decision_duration_seconds_bucket{le=\"0.001\"} 0",
            "zester_auth_decision_duration_seconds_bucket{le=\"0.0025\"} 4",
            "zester_auth_decision_duration_seconds_bucket{le=\"+Inf\"} 4",
        ] {
            assert!(text.lines().any(|l| l == line), "{line}\nnot in:\n{text}");
        }
        assert!(!text.contains("admin"), "{text}");
    }

    #[test]
    fn live_readings_are_read_at_each_scrape() {
        let text = metrics().render(Format::PrometheusText).unwrap();
        for line in [
            "# TYPE zester_sessions gauge",
            "zester_sessions 3",
            "zester_keys{state=\"accepted\"} 2",
            "zester_keys{state=\"revoked\"} 1",
            "# TYPE zester_nats_server_restarts_total counter",
            "zester_nats_server_restarts_total 1",
            "zester_callout_shed_requests_total 4",
            "zester_audit_records_dropped_total 5",
            "# TYPE zester_credential_expires_in_seconds gauge",
            "zester_credential_expires_in_seconds{kind=\"peel\"} 600",
            "zester_credential_expires_in_seconds{kind=\"ca\"} -7",
            "zester_cluster_nodes{state=\"known\"} 3",
            "zester_cluster_nodes{state=\"up\"} 2",
        ] {
            assert!(text.lines().any(|l| l == line), "{line}\nnot in:\n{text}");
        }
    }

    #[test]
    fn no_live_readings_until_told_where_from() {
        let m = Metrics::new();
        m.observe(&record(Source::Callout, Verdict::Allow, "", "peel"));
        let text = m.render(Format::PrometheusText).unwrap();
        assert!(text.contains("zester_auth_decisions_total{"), "{text}");
        assert!(!text.contains("zester_sessions"), "{text}");
    }

    #[test]
    fn openmetrics_when_asked_for_it() {
        assert_eq!(Format::from_accept(None), Format::PrometheusText);
        assert_eq!(Format::from_accept(Some("*/*")), Format::PrometheusText);
        // What Prometheus 2.x/3.x sends.
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::from_accept(Some(prometheus)), Format::OpenMetrics);
        let text = metrics().render(Format::OpenMetrics).unwrap();
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(
            text.contains("# UNIT zester_credential_expires_in_seconds seconds"),
            "{text}"
        );
        assert!(Format::OpenMetrics
            .content_type()
            .starts_with("application/openmetrics-text"));
    }
}
