//! The webhook sink end to end: `cep serve` reading a real broker, POSTing
//! to a real HTTP server in this process that fails its first calls, goes
//! down for a while, checks every HMAC signature and rejects one alert for
//! good.

use crate::support;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use support::*;

const SECRET: &str = "s3cret-for-tests";

#[derive(Default)]
struct Hook {
    calls: AtomicUsize,
    fail_first: usize,
    /// Idempotency keys of accepted posts.
    accepted: Mutex<Vec<String>>,
    bad_signatures: AtomicUsize,
}

async fn receive(State(h): State<Arc<Hook>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let n = h.calls.fetch_add(1, Ordering::SeqCst);
    let sig = headers
        .get("x-cep-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if sig != cep::service::sink::webhook::signature(SECRET.as_bytes(), &body) {
        h.bad_signatures.fetch_add(1, Ordering::SeqCst);
        return StatusCode::UNAUTHORIZED;
    }
    if n < h.fail_first {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    let alert: serde_json::Value = serde_json::from_slice(&body).unwrap();
    if alert["fields"]["amount"] == 999.0 {
        return StatusCode::UNPROCESSABLE_ENTITY;
    }
    let key = headers["idempotency-key"].to_str().unwrap().to_string();
    assert_eq!(key, alert["alert_id"].as_str().unwrap());
    h.accepted.lock().unwrap().push(key);
    StatusCode::OK
}

/// Serves the hook on `port` until the returned sender is dropped.
fn serve_hook(
    rt: &tokio::runtime::Runtime,
    port: u16,
    hook: Arc<Hook>,
) -> tokio::sync::oneshot::Sender<()> {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let app = Router::new().route("/hook", post(receive)).with_state(hook);
    let listener = rt.block_on(async {
        let t0 = Instant::now();
        loop {
            match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
                Ok(l) => break l,
                Err(e) => {
                    assert!(t0.elapsed() < Duration::from_secs(10), "rebind {port}: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    rt.spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = rx.await;
            })
            .await
            .unwrap();
    });
    tx
}

const EVERY_LARGE: &str = r#"
pattern every_large
  from cards key card.id time ts
  match x
  define x as amount > 500
  emit amount = x.amount
end
"#;

#[test]
fn webhook_retries_pushes_back_while_down_signs_and_dead_letters() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let broker = Broker::start();
    let b = broker.brokers();
    create_topic(&b, "cards", 1);
    let dir = scratch("webhook");
    std::fs::create_dir_all(dir.join("patterns")).unwrap();
    std::fs::write(dir.join("patterns/every_large.cep"), EVERY_LARGE).unwrap();

    let port = free_port();
    let hook = Arc::new(Hook {
        fail_first: 3,
        ..Hook::default()
    });
    let server = serve_hook(&rt, port, hook.clone());

    let config = format!(
        r#"
[serve]
patterns = "patterns"
listen = "127.0.0.1:{{HTTP}}"
default_sinks = ["hook"]
checkpoint_interval = "300ms"

[kafka]
brokers = "{b}"

[[kafka.inputs]]
topic = "cards"

[sinks.hook]
type = "webhook"
url = "http://127.0.0.1:{port}/hook"
secret_env = "TEST_HOOK_SECRET"
max_retries = 100
initial_backoff = "20ms"
max_backoff = "300ms"
concurrency = 2
queue = 4
"#
    );
    let event = |n: usize, amount: f64| {
        serde_json::to_vec(&serde_json::json!({
            "card": {"id": format!("c{}", n % 37)},
            "ts": 1_700_000_000_000i64 + n as i64 * 1000,
            "amount": amount,
        }))
        .unwrap()
    };
    // Each batch ends with a later event that matches nothing: an event is
    // matched once the watermark has passed it, that is once a later one
    // arrived (lateness 0).
    let first: Vec<Vec<u8>> = (0..61)
        .map(|n| event(n, if n == 60 { 1.0 } else { 600.0 }))
        .collect();
    let second: Vec<Vec<u8>> = (61..201)
        .map(|n| match n {
            150 => event(n, 999.0),
            200 => event(n, 1.0),
            _ => event(n, 600.0),
        })
        .collect();
    let outs = |v: &[Vec<u8>]| -> Vec<Vec<u8>> { v.to_vec() };
    let as_out = |v: &[Vec<u8>]| {
        produce(
            &b,
            "cards",
            &v.iter()
                .map(|x| Out {
                    partition: None,
                    key: None,
                    value: x,
                })
                .collect::<Vec<_>>(),
        )
    };
    let mut all = outs(&first);
    all.extend(outs(&second));
    let mut text = Vec::new();
    for l in &all {
        text.extend_from_slice(l);
        text.push(b'\n');
    }
    std::fs::write(dir.join("events.jsonl"), text).unwrap();
    let want: BTreeSet<String> = replay(&dir.join("patterns"), &dir.join("events.jsonl"), "0s")
        .into_iter()
        .filter(|(_, a)| a["fields"]["amount"] != 999.0)
        .map(|(id, _)| id)
        .collect();
    assert_eq!(want.len(), 198);

    as_out(&first);
    let mut serve = Serve::start_with_env(&dir, &config, &[("TEST_HOOK_SECRET", SECRET)]);
    serve.wait_ready(Duration::from_secs(60));
    let accepted = |h: &Hook| {
        h.accepted
            .lock()
            .unwrap()
            .iter()
            .cloned()
            .collect::<BTreeSet<_>>()
    };
    let t0 = Instant::now();
    while accepted(&hook).len() < 60 {
        assert!(t0.elapsed() < Duration::from_secs(60), "{}", serve.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        serve.metric("cep_sink_retries_total", "sink=\"hook\"") >= 3.0,
        "the first calls failed"
    );

    // Down: the sink's queue fills and the consumer stops reading.
    drop(server);
    std::thread::sleep(Duration::from_millis(300));
    as_out(&second);
    std::thread::sleep(Duration::from_secs(3));
    let read_while_down = serve.metric("cep_events_in_total", "");
    assert!(
        read_while_down < 80.0,
        "the consumer kept reading ({read_while_down} records) while the hook was down"
    );
    assert!(serve.metric("cep_outputs_outstanding", "") <= 8.0);

    // Back up: everything arrives, nothing was lost.
    let _server = serve_hook(&rt, port, hook.clone());
    let t0 = Instant::now();
    while accepted(&hook) != want {
        assert!(
            t0.elapsed() < Duration::from_secs(90),
            "{} of {} delivered\n{}",
            accepted(&hook).len(),
            want.len(),
            serve.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(hook.bad_signatures.load(Ordering::SeqCst), 0);

    // The alert the hook refused for good is in the dead-letter file.
    let dead = dir.join("state/dead-alerts-hook.jsonl");
    let t0 = Instant::now();
    while !dead.exists() {
        assert!(t0.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(100));
    }
    let line: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(&dead)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(line["alert"]["fields"]["amount"], 999.0);
    assert!(line["reason"].as_str().unwrap().contains("422"), "{line}");

    serve.signal("-TERM");
    assert!(
        serve.wait(Duration::from_secs(30)).success(),
        "{}",
        serve.log()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
