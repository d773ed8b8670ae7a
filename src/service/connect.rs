//! Connecting to the cluster: the one place where `[kafka]` becomes
//! librdkafka settings (every client of the service is built from
//! [`client_config`]: the consumer, the producers, topic creation and
//! `cep produce`), and the check at start-up that the cluster can be
//! reached as configured.
//!
//! Why a check of our own: librdkafka retries a refused login, an untrusted
//! certificate or an unreachable broker for ever, logging as it goes, and a
//! service that "runs" without reading anything is worse than one that
//! stops. [`check`] asks for metadata until `kafka.connect_timeout`; a
//! failure that cannot heal by waiting (authentication, TLS, a plaintext
//! client at a TLS listener) ends it at once, and every failure becomes one
//! message that names the cause and the key to change. No message carries
//! a secret: librdkafka's own never do, and ours name where a password is
//! read from, not what it is.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, Producer, ProducerContext};

use crate::config::{KafkaSection, SaslConfig};

/// librdkafka settings for a client of `k`'s cluster: brokers, TLS, SASL,
/// then `kafka.options` (which win).
pub fn client_config(k: &KafkaSection) -> Result<ClientConfig, String> {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &k.brokers)
        .set("security.protocol", k.protocol.as_librdkafka());
    if k.protocol.uses_tls() {
        let t = &k.tls;
        // Without a CA file, librdkafka probes the usual CA bundle paths:
        // the vendored OpenSSL's compiled-in directory is not the system's.
        let ca = t.ca_file.as_ref().map_or("probe".into(), |f| path(f));
        c.set("ssl.ca.location", ca);
        if let (Some(cert), Some(key)) = (&t.cert_file, &t.key_file) {
            c.set("ssl.certificate.location", path(cert))
                .set("ssl.key.location", path(key));
        }
        if let Some(env) = &t.key_password_env {
            let p = std::env::var(env).map_err(|_| {
                format!("kafka.tls.key_password_env: the environment variable {env} is not set")
            })?;
            c.set("ssl.key.password", p);
        }
        let check = if t.skip_hostname_check {
            "none"
        } else {
            "https"
        };
        c.set("ssl.endpoint.identification.algorithm", check);
    }
    if let Some(s) = &k.sasl {
        c.set("sasl.mechanism", s.mechanism.as_str())
            .set("sasl.username", &s.username)
            .set("sasl.password", s.password()?.expose());
    }
    for (key, v) in k.options.iter() {
        c.set(key, v);
    }
    Ok(c)
}

fn path(p: &std::path::Path) -> String {
    p.display().to_string()
}

/// Errors librdkafka reports while [`check`] waits.
#[derive(Default)]
struct Recorder {
    errors: Mutex<Vec<(Option<RDKafkaErrorCode>, String)>>,
}

impl ClientContext for Recorder {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, msg: &str) {
        tracing::debug!(target: "librdkafka", ?level, fac, "{msg}");
        // A broker's connection failures are logged (facility FAIL, level
        // info), not always raised as error events.
        if fac == "FAIL" || (level as i32) <= (RDKafkaLogLevel::Warning as i32) {
            // Without librdkafka's thread prefix: the message names the
            // broker already.
            let msg = match msg.strip_prefix("[thrd:") {
                Some(rest) => rest.split_once("]: ").map_or(msg, |(_, m)| m),
                None => msg,
            };
            self.errors
                .lock()
                .expect("errors lock")
                .push((None, msg.to_string()));
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!(target: "librdkafka", %error, reason, "while connecting");
        let code = error.rdkafka_error_code();
        self.errors
            .lock()
            .expect("errors lock")
            .push((code, reason.to_string()));
    }
}

impl ProducerContext for Recorder {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &rdkafka::message::DeliveryResult<'_>, _: ()) {}
}

/// Why the cluster cannot be used as configured.
#[derive(Debug, PartialEq, Eq)]
enum Cause {
    Authentication,
    UntrustedCertificate,
    /// The brokers want a client certificate, or refuse the one given.
    ClientCertificate,
    Tls,
    PlaintextToTls,
    Unreachable,
}

/// What an error says about the cause, if it is one that waiting cannot
/// heal. `tls`: whether the client speaks TLS.
fn classify(code: Option<RDKafkaErrorCode>, reason: &str, tls: bool) -> Option<Cause> {
    let lower = reason.to_ascii_lowercase();
    // A TLS listener hangs up on a plaintext client's first request
    // (librdkafka adds a hint only against some brokers).
    let hung_up_at_hello =
        lower.contains("connection closed by peer") && lower.contains("apiversion_query");
    match code {
        Some(RDKafkaErrorCode::Authentication) => Some(Cause::Authentication),
        Some(RDKafkaErrorCode::SaslAuthenticationFailed) => Some(Cause::Authentication),
        _ if lower.contains("certificate verify failed") => Some(Cause::UntrustedCertificate),
        // TLS alerts the broker sends about the client's certificate.
        _ if [
            "alert certificate required",
            "alert bad certificate",
            "alert unknown ca",
            "alert certificate unknown",
        ]
        .iter()
        .any(|a| lower.contains(a)) =>
        {
            Some(Cause::ClientCertificate)
        }
        Some(RDKafkaErrorCode::SSL) => Some(Cause::Tls),
        _ if lower.contains("ssl handshake failed") => Some(Cause::Tls),
        _ if lower.contains("incorrect security.protocol") => Some(Cause::PlaintextToTls),
        _ if hung_up_at_hello && !tls => Some(Cause::PlaintextToTls),
        _ => None,
    }
}

/// The message for a failure of `cause` (`reason`: librdkafka's words).
fn explain(k: &KafkaSection, cause: &Cause, reason: &str, waited: Duration) -> String {
    let brokers = &k.brokers;
    match cause {
        Cause::Authentication => {
            let (user, mechanism, source) = match &k.sasl {
                Some(s) => (s.username.as_str(), s.mechanism.as_str(), password_source(s)),
                None => ("?", "?", "kafka.options".into()),
            };
            format!(
                "kafka: authentication failed at {brokers} for user `{user}` ({mechanism}): {reason}; check kafka.sasl.username and the password (read from {source})"
            )
        }
        Cause::UntrustedCertificate => format!(
            "kafka: the TLS certificate of {brokers} is not trusted: {reason}; set kafka.tls.ca_file to the CA certificate (PEM) that signed it{}",
            k.tls
                .ca_file
                .as_ref()
                .map_or(String::new(), |f| format!(" (now {})", f.display()))
        ),
        Cause::ClientCertificate => match (&k.tls.cert_file, &k.tls.key_file) {
            (Some(cert), _) => format!(
                "kafka: {brokers} refused the client certificate {} (mutual TLS): {reason}; use a certificate signed by a CA the brokers trust",
                cert.display()
            ),
            _ => format!(
                "kafka: {brokers} requires a client certificate (mutual TLS): {reason}; set kafka.tls.cert_file and kafka.tls.key_file"
            ),
        },
        Cause::Tls => format!(
            "kafka: the TLS handshake with {brokers} failed: {reason}; if the brokers do not speak TLS on this port, set kafka.protocol = \"plaintext\" or \"sasl_plaintext\""
        ),
        Cause::PlaintextToTls => format!(
            "kafka: {brokers} closed the connection during the handshake, as a TLS listener does to a plaintext client: {reason}; set kafka.protocol = \"ssl\" or \"sasl_ssl\""
        ),
        Cause::Unreachable => format!(
            "kafka: cannot reach the brokers {brokers} within {:.0?} (kafka.connect_timeout): {reason}",
            waited
        ),
    }
}

fn password_source(s: &SaslConfig) -> String {
    match (&s.password_file, &s.password_env) {
        (Some(f), _) => format!("kafka.sasl.password_file {}", f.display()),
        (None, Some(e)) => format!("the environment variable {e}"),
        (None, None) => format!(
            "the environment variable {}",
            crate::config::service::DEFAULT_PASSWORD_ENV
        ),
    }
}

/// Asks the cluster for metadata until it answers or `kafka.connect_timeout`
/// passes; fails at once on a cause waiting cannot heal. Blocking: call it
/// from a blocking thread (see [`check`]).
fn check_blocking(k: &KafkaSection) -> Result<(), String> {
    let timeout = k.connect_timeout.0;
    let mut c = client_config(k)?;
    // Fail within the timeout rather than queueing for librdkafka's default
    // of several minutes.
    c.set("socket.connection.setup.timeout.ms", "10000")
        .set_log_level(RDKafkaLogLevel::Info);
    let client: BaseProducer<Recorder> = c
        .create_with_context(Recorder::default())
        .map_err(|e| format!("kafka: {e}"))?;
    let started = Instant::now();
    // What librdkafka last said, which names the cause better than the
    // metadata request's own error.
    let mut said: Option<String> = None;
    let mut hang_ups = 0;
    loop {
        let left = timeout.saturating_sub(started.elapsed());
        let attempt = left.min(Duration::from_millis(500));
        let failed = match client.client().fetch_metadata(None, attempt) {
            Ok(_) => return Ok(()),
            Err(e) => e.to_string(),
        };
        // Serves the queued error events (one per poll call otherwise).
        client.poll(Duration::from_millis(50));
        let errors = std::mem::take(&mut *client.context().errors.lock().expect("errors lock"));
        for (code, reason) in errors {
            match classify(code, &reason, k.protocol.uses_tls()) {
                // Twice, so that one connection dropped by a broker that is
                // going down is not mistaken for a TLS listener.
                Some(Cause::PlaintextToTls) if hang_ups == 0 => hang_ups += 1,
                Some(cause) => return Err(explain(k, &cause, &reason, started.elapsed())),
                None => {}
            }
            // "1/1 brokers are down" follows every failure: keep what
            // came before it.
            if !reason.contains("brokers are down") || said.is_none() {
                said = Some(reason);
            }
        }
        if started.elapsed() >= timeout {
            let last = said.unwrap_or(failed);
            return Err(explain(k, &Cause::Unreachable, &last, timeout));
        }
    }
}

/// The number of partitions of each input topic (topics that do not exist
/// yet are left out: they are created with one partition by the broker's
/// defaults or by their producer).
pub async fn partition_counts(
    k: &KafkaSection,
) -> Result<std::collections::BTreeMap<String, i32>, String> {
    let topics: Vec<String> = k.inputs.iter().map(|i| i.topic.clone()).collect();
    partition_counts_of(k, &topics).await
}

/// The number of partitions of each of `topics` that exists.
pub async fn partition_counts_of(
    k: &KafkaSection,
    topics: &[String],
) -> Result<std::collections::BTreeMap<String, i32>, String> {
    let (k, topics) = (k.clone(), topics.to_vec());
    tokio::task::spawn_blocking(move || {
        let client: BaseProducer = client_config(&k)?
            .create()
            .map_err(|e| format!("kafka: {e}"))?;
        let mut counts = std::collections::BTreeMap::new();
        for topic in topics {
            let md = client
                .client()
                .fetch_metadata(Some(&topic), k.connect_timeout.0)
                .map_err(|e| format!("kafka: metadata of topic {topic}: {e}"))?;
            let n = md.topics().first().map_or(0, |t| t.partitions().len());
            if n > 0 {
                counts.insert(topic, n as i32);
            }
        }
        Ok(counts)
    })
    .await
    .map_err(|e| format!("kafka: metadata: {e}"))?
}

/// Checks that the cluster can be used as configured (see the module
/// notes), on a blocking thread.
pub async fn check(k: &KafkaSection) -> Result<(), String> {
    let k = k.clone();
    tokio::task::spawn_blocking(move || check_blocking(&k))
        .await
        .map_err(|e| format!("kafka: connection check: {e}"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_that_waiting_cannot_heal_are_recognised() {
        use RDKafkaErrorCode as C;
        let auth = "SASL authentication error: Authentication failed during authentication due to invalid credentials with SASL mechanism SCRAM-SHA-512";
        assert_eq!(
            classify(Some(C::Authentication), auth, true),
            Some(Cause::Authentication)
        );
        let cert = "ssl://127.0.0.1:1/bootstrap: SSL handshake failed: error:0A000086:SSL routines::certificate verify failed: broker certificate could not be verified";
        assert_eq!(
            classify(Some(C::SSL), cert, true),
            Some(Cause::UntrustedCertificate)
        );
        let plain = "127.0.0.1:1/bootstrap: Disconnected while requesting ApiVersion: might be caused by incorrect security.protocol configuration (connecting to a SSL listener?) or broker version is < 0.10";
        assert_eq!(
            classify(Some(C::BrokerTransportFailure), plain, false),
            Some(Cause::PlaintextToTls)
        );
        let refused =
            "127.0.0.1:1/bootstrap: Connect to ipv4#127.0.0.1:1 failed: Connection refused";
        assert_eq!(
            classify(Some(C::BrokerTransportFailure), refused, false),
            None
        );
        let down = "1/1 brokers are down";
        assert_eq!(classify(Some(C::AllBrokersDown), down, true), None);
        let required = "ssl://127.0.0.1:1/bootstrap: Receive failed: error:0A00045C:SSL routines::tlsv13 alert certificate required: SSL alert number 116 (after 4ms in state APIVERSION_QUERY)";
        assert_eq!(
            classify(None, required, true),
            Some(Cause::ClientCertificate)
        );
        let hung_up = "sasl_plaintext://127.0.0.1:1/bootstrap: Disconnected: connection closed by peer: receive 0 after POLLIN (after 0ms in state APIVERSION_QUERY)";
        assert_eq!(classify(None, hung_up, false), Some(Cause::PlaintextToTls));
        assert_eq!(classify(None, hung_up, true), None);
    }

    #[test]
    fn tls_and_sasl_keys_become_librdkafka_settings_and_options_win() {
        let dir = std::env::temp_dir().join(format!("cep-connect-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pw = dir.join("pw");
        std::fs::write(&pw, "s3cret\n").unwrap();
        let text = format!(
            r#"
brokers = "b:9093"
inputs = []
protocol = "sasl_ssl"
[tls]
ca_file = "/etc/ca.pem"
[sasl]
mechanism = "SCRAM-SHA-512"
username = "alice"
password_file = "{}"
[options]
"client.rack" = "r1"
"sasl.username" = "bob"
"#,
            pw.display()
        );
        let k: KafkaSection = toml::from_str(&text).unwrap();
        let c = client_config(&k).unwrap();
        assert_eq!(c.get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(c.get("ssl.ca.location"), Some("/etc/ca.pem"));
        assert_eq!(
            c.get("ssl.endpoint.identification.algorithm"),
            Some("https")
        );
        assert_eq!(c.get("sasl.mechanism"), Some("SCRAM-SHA-512"));
        assert_eq!(c.get("sasl.password"), Some("s3cret"));
        assert_eq!(c.get("sasl.username"), Some("bob"));
        assert_eq!(c.get("client.rack"), Some("r1"));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn without_a_ca_file_the_system_store_is_probed() {
        let k: KafkaSection =
            toml::from_str("brokers = \"b:9093\"\ninputs = []\nprotocol = \"ssl\"").unwrap();
        let c = client_config(&k).unwrap();
        assert_eq!(c.get("ssl.ca.location"), Some("probe"));
        assert_eq!(c.get("sasl.mechanism"), None);
    }
}
