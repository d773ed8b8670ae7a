//! Alerts as HTTP POSTs.
//!
//! Each alert is POSTed as JSON with `Idempotency-Key: <alert id>` (a
//! re-delivered alert keeps its id, so the receiver can drop repeats) and,
//! when a secret is configured, `X-Cep-Signature: sha256=<hex HMAC-SHA256
//! of the body>`. A 2xx answer delivers it. A timeout, a refused
//! connection, 408, 429 or 5xx is retried with exponential backoff and full
//! jitter, up to `max_retries`; any other answer is final. Either way an
//! alert that is not delivered goes to the dead-letter destination.
//!
//! At most `concurrency` requests are in flight; beyond that alerts wait in
//! the sink's bounded queue, and beyond that the pipeline waits.

use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::sync::{mpsc, Semaphore};

use super::{AlertOut, DeadLetter, Delivery, SinkEnv};
use crate::config::service::WebhookSink;
use crate::service::metrics::SinkCounters;

pub const SIGNATURE_HEADER: &str = "X-Cep-Signature";

pub struct Webhook {
    name: String,
    url: String,
    client: reqwest::Client,
    secret: Option<Vec<u8>>,
    max_retries: u32,
    initial_backoff: Duration,
    max_backoff: Duration,
    concurrency: usize,
}

/// `sha256=<hex>` of `body` under `secret`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The environment variable a sink's secret is read from by default.
pub fn default_secret_env(sink: &str) -> String {
    format!(
        "CEP_SINK_{}_SECRET",
        sink.to_ascii_uppercase().replace('-', "_")
    )
}

enum Failure {
    Retry(String),
    Final(String),
}

impl Webhook {
    pub fn new(name: &str, c: &WebhookSink) -> Result<Webhook, String> {
        let env = c
            .secret_env
            .clone()
            .unwrap_or_else(|| default_secret_env(name));
        let secret = std::env::var(&env)
            .ok()
            .or_else(|| c.secret.as_ref().map(|s| s.expose().to_string()))
            .map(String::into_bytes);
        let client = reqwest::Client::builder()
            .timeout(c.timeout.0)
            .build()
            .map_err(|e| format!("sinks.{name}: {e}"))?;
        Ok(Webhook {
            name: name.to_string(),
            url: c.url.clone(),
            client,
            secret,
            max_retries: c.max_retries,
            initial_backoff: c.initial_backoff.0,
            max_backoff: c.max_backoff.0,
            concurrency: c.concurrency.max(1),
        })
    }

    pub async fn run(self, mut rx: mpsc::Receiver<Delivery>, dead: DeadLetter, env: SinkEnv) {
        let hook = Arc::new(self);
        let dead = Arc::new(dead);
        let slots = Arc::new(Semaphore::new(hook.concurrency));
        let counters = env.metrics.sink(&hook.name);
        while let Some(d) = rx.recv().await {
            let permit = slots.clone().acquire_owned().await.expect("open");
            let (hook, dead, env, counters) =
                (hook.clone(), dead.clone(), env.clone(), counters.clone());
            tokio::spawn(async move {
                if let Err(reason) = hook.deliver(&d.alert, &counters).await {
                    counters.failures.inc();
                    dead.write(&d.alert, &reason).await;
                }
                env.ledger.settle(d.ticket);
                drop(permit);
            });
        }
        let _ = slots.acquire_many(hook.concurrency as u32).await;
    }

    async fn deliver(&self, a: &AlertOut, counters: &SinkCounters) -> Result<(), String> {
        let mut attempt = 0;
        loop {
            match self.post(a).await {
                Ok(()) => {
                    counters.successes.inc();
                    return Ok(());
                }
                Err(Failure::Final(reason)) => return Err(reason),
                Err(Failure::Retry(reason)) if attempt >= self.max_retries => {
                    return Err(format!("gave up after {} attempts: {reason}", attempt + 1))
                }
                Err(Failure::Retry(reason)) => {
                    counters.retries.inc();
                    tracing::warn!(sink = %self.name, alert_id = %a.id, attempt, %reason, "retrying a webhook");
                    tokio::time::sleep(self.backoff(attempt, &a.id)).await;
                    attempt += 1;
                }
            }
        }
    }

    /// Full jitter: uniform in [0, min(max, initial·2^attempt)].
    fn backoff(&self, attempt: u32, id: &str) -> Duration {
        let cap = self
            .initial_backoff
            .saturating_mul(1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX))
            .min(self.max_backoff);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos() as u64);
        let seed = crate::event::stable_hash(id.as_bytes(), nanos ^ attempt as u64);
        cap.mul_f64((seed >> 11) as f64 / (1u64 << 53) as f64)
    }

    async fn post(&self, a: &AlertOut) -> Result<(), Failure> {
        let mut req = self
            .client
            .post(&self.url)
            .header("content-type", "application/json")
            .header("Idempotency-Key", &a.id)
            .header("X-Cep-Pattern", &a.pattern)
            .body(a.body.clone());
        if let Some(s) = &self.secret {
            req = req.header(SIGNATURE_HEADER, signature(s, &a.body));
        }
        match req.send().await {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => {
                let s = r.status();
                let why = format!("{} answered {s}", self.url);
                if s.is_server_error() || s.as_u16() == 408 || s.as_u16() == 429 {
                    Err(Failure::Retry(why))
                } else {
                    Err(Failure::Final(why))
                }
            }
            Err(e) => Err(Failure::Retry(format!("{}: {e}", self.url))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_a_known_hmac() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn secret_env_names_follow_the_sink() {
        assert_eq!(default_secret_env("ops-hook"), "CEP_SINK_OPS_HOOK_SECRET");
    }
}
