//! Secured Kafka: a real nisshi broker serving only TLS and requiring
//! SCRAM-SHA-512 logins. `cep produce` and `cep serve` work over SASL_SSL
//! end to end; a wrong password, an untrusted certificate, plaintext to the
//! TLS listener and an unreachable broker each stop them within 30 s with a
//! message naming the cause, `/readyz` never true meanwhile, and the
//! password never printed.

use crate::support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use support::*;

const USER: &str = "alice";
const PASSWORD: &str = "wonderland-7f3a";
const PASSWORD_ENV: &str = "CEP_TEST_KAFKA_PASSWORD";

const PATTERN: &str = r#"pattern small_then_large
  from cards key card.id time ts within 5m
  match small then large
  define small as amount < 10, large as amount > 500
  emit large_amount = large.amount
end
"#;

/// A serve config for the secured broker; `security` replaces the
/// security keys of `[kafka]`.
fn config(brokers: &str, security: &str) -> String {
    format!(
        r#"
[serve]
patterns = "patterns"
state_dir = "state"
checkpoint_interval = "300ms"
listen = "127.0.0.1:{{HTTP}}"
default_sinks = ["alerts"]

[kafka]
brokers = "{brokers}"
group_id = "cep-secure"
connect_timeout = "10s"
{security}

[[kafka.inputs]]
topic = "cards"

[sinks.alerts]
type = "kafka"
topic = "alerts"
"#
    )
}

fn sasl_ssl(ca: &Path, password_env: &str) -> String {
    format!(
        r#"protocol = "sasl_ssl"
[kafka.tls]
ca_file = "{}"
[kafka.sasl]
mechanism = "SCRAM-SHA-512"
username = "{USER}"
password_env = "{password_env}"
"#,
        ca.display()
    )
}

fn setup(name: &str) -> (Broker, std::path::PathBuf) {
    let broker = Broker::start_secured(&[(USER, PASSWORD)]);
    let dir = scratch(name);
    std::fs::create_dir_all(dir.join("patterns")).unwrap();
    std::fs::write(dir.join("patterns/small_then_large.cep"), PATTERN).unwrap();
    (broker, dir)
}

fn events(dir: &Path) -> std::path::PathBuf {
    let mut text = String::new();
    for (n, (card, amount)) in [("c1", 5), ("c2", 7), ("c1", 900), ("c3", 1), ("c2", 800)]
        .iter()
        .enumerate()
    {
        text.push_str(&format!(
            "{{\"card\":{{\"id\":\"{card}\"}},\"ts\":{},\"amount\":{amount}}}\n",
            1_700_000_000_000i64 + n as i64 * 1000
        ));
    }
    // Moves the watermark past every window.
    text.push_str("{\"card\":{\"id\":\"end\"},\"ts\":1700090000000,\"amount\":50}\n");
    let path = dir.join("events.jsonl");
    std::fs::write(&path, text).unwrap();
    path
}

/// `cep produce --config` over SASL_SSL.
fn cep_produce(dir: &Path, input: &Path, env: &[(&str, &str)]) -> (bool, String, Duration) {
    let t0 = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_cep"))
        .current_dir(dir)
        .args(["produce", "--config", "config.toml", "--topic", "cards"])
        .arg("--input")
        .arg(input)
        .args(["--key-field", "card.id", "--partitions", "1"])
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text, t0.elapsed())
}

#[test]
fn serve_and_produce_work_over_sasl_ssl_with_scram_sha_512() {
    let (broker, dir) = setup("secure-ok");
    let b = broker.brokers();
    let ca = broker.ca.clone().unwrap();
    create_topic(&b, "alerts", 1);
    let cfg = config(&b, &sasl_ssl(&ca, PASSWORD_ENV));
    std::fs::write(dir.join("config.toml"), cfg.replace("{HTTP}", "0")).unwrap();
    let input = events(&dir);
    let (ok, text, _) = cep_produce(&dir, &input, &[(PASSWORD_ENV, PASSWORD)]);
    assert!(ok, "cep produce over SASL_SSL: {text}");
    assert!(text.contains("produced 6 records"), "{text}");

    let mut serve = Serve::start_with_env(&dir, &cfg, &[(PASSWORD_ENV, PASSWORD)]);
    serve.wait_ready(Duration::from_secs(60));
    let got = consume_until(&b, "alerts", Duration::from_secs(60), |g| g.len() >= 2);
    let mut keys: Vec<String> = got
        .iter()
        .map(|g| g.json()["key"].as_str().unwrap().to_string())
        .collect();
    keys.sort();
    assert_eq!(keys, ["c1", "c2"], "{}", serve.log());
    let (_, metrics) = serve.get("/metrics").unwrap();
    assert!(!metrics.contains(PASSWORD));
    serve.signal("-TERM");
    assert!(
        serve.wait(Duration::from_secs(30)).success(),
        "{}",
        serve.log()
    );
    let log = serve.log();
    assert!(log.contains("connected to kafka"), "{log}");
    assert!(
        !log.contains(PASSWORD),
        "the password is in the log:\n{log}"
    );
}

/// Starts `cep serve` with `security`, expects it to exit non-zero within
/// 30 s, never ready meanwhile; returns its log.
fn refused(name: &str, security: impl Fn(&Broker) -> String, env: &[(&str, &str)]) -> String {
    let (broker, dir) = setup(name);
    let cfg = config(&broker.brokers(), &security(&broker));
    let t0 = Instant::now();
    let mut serve = Serve::start_with_env(&dir, &cfg, env);
    let status = loop {
        if let Some((code, body)) = serve.get("/readyz") {
            assert_ne!(code, 200, "ready without a connection: {body}");
        }
        if let Some(s) = serve.try_wait() {
            break s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "still running after 30 s:\n{}",
            serve.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(!status.success(), "{}", serve.log());
    let log = serve.log();
    eprintln!(
        "{name}: after {:?}: {}",
        t0.elapsed(),
        log.lines().last().unwrap_or_default()
    );
    for (_, secret) in env {
        assert!(!log.contains(secret), "a secret is in the log:\n{log}");
    }
    log
}

#[test]
fn a_wrong_password_stops_serve_with_the_cause() {
    let wrong = "not-the-password-9c1e";
    let log = refused(
        "secure-password",
        |b| sasl_ssl(b.ca.as_ref().unwrap(), PASSWORD_ENV),
        &[(PASSWORD_ENV, wrong)],
    );
    assert!(
        log.contains("authentication failed")
            && log.contains("`alice`")
            && log.contains(PASSWORD_ENV),
        "{log}"
    );
}

#[test]
fn an_untrusted_certificate_stops_serve_with_the_cause() {
    let log = refused(
        "secure-ca",
        |b| {
            // A CA that did not sign the broker's certificate.
            let (other, _) = broker::self_signed(&b.dir, "other");
            sasl_ssl(&other, PASSWORD_ENV)
        },
        &[(PASSWORD_ENV, PASSWORD)],
    );
    assert!(
        log.contains("is not trusted") && log.contains("kafka.tls.ca_file"),
        "{log}"
    );
}

#[test]
fn without_the_ca_file_the_self_signed_broker_is_not_trusted() {
    let log = refused(
        "secure-no-ca",
        |b| {
            sasl_ssl(b.ca.as_ref().unwrap(), PASSWORD_ENV).replace(
                &format!("ca_file = \"{}\"\n", b.ca.as_ref().unwrap().display()),
                "",
            )
        },
        &[(PASSWORD_ENV, PASSWORD)],
    );
    assert!(log.contains("is not trusted"), "{log}");
}

#[test]
fn plaintext_to_the_tls_listener_stops_serve_with_the_cause() {
    let log = refused(
        "secure-plain",
        |_| {
            format!(
                "protocol = \"sasl_plaintext\"\n[kafka.sasl]\nmechanism = \"SCRAM-SHA-512\"\nusername = \"{USER}\"\npassword_env = \"{PASSWORD_ENV}\"\n"
            )
        },
        &[(PASSWORD_ENV, PASSWORD)],
    );
    assert!(
        log.contains("TLS listener") && log.contains("kafka.protocol"),
        "{log}"
    );
}

#[test]
fn an_unreachable_broker_stops_serve_after_the_connect_timeout() {
    let dir = scratch("secure-unreachable");
    std::fs::create_dir_all(dir.join("patterns")).unwrap();
    std::fs::write(dir.join("patterns/small_then_large.cep"), PATTERN).unwrap();
    let nobody = format!("127.0.0.1:{}", free_port());
    let cfg = config(&nobody, "").replace("connect_timeout = \"10s\"", "connect_timeout = \"3s\"");
    let t0 = Instant::now();
    let mut serve = Serve::start(&dir, &cfg);
    let status = serve.wait(Duration::from_secs(30));
    assert!(!status.success());
    assert!(
        t0.elapsed() >= Duration::from_secs(3),
        "gave up before the timeout"
    );
    let log = serve.log();
    assert!(
        log.contains("cannot reach the brokers") && log.contains(&nobody),
        "{log}"
    );
}

#[test]
fn produce_with_a_wrong_password_fails_fast_with_the_cause() {
    let (broker, dir) = setup("secure-produce");
    let cfg = config(
        &broker.brokers(),
        &sasl_ssl(broker.ca.as_ref().unwrap(), PASSWORD_ENV),
    );
    std::fs::write(dir.join("config.toml"), cfg.replace("{HTTP}", "0")).unwrap();
    let input = events(&dir);
    let (ok, text, took) = cep_produce(&dir, &input, &[(PASSWORD_ENV, "wrong-1234")]);
    assert!(!ok);
    assert!(took < Duration::from_secs(30));
    assert!(text.contains("authentication failed"), "{text}");
    assert!(!text.contains("wrong-1234"), "{text}");
    // Without the variable at all: a message naming it, not a login attempt.
    let (ok, text, _) = cep_produce(&dir, &input, &[]);
    assert!(!ok);
    assert!(
        text.contains(PASSWORD_ENV) && text.contains("not set"),
        "{text}"
    );
}

#[test]
fn mutual_tls_works_with_the_client_certificate_and_stops_without_it() {
    let broker = Broker::start_mutual_tls();
    let b = broker.brokers();
    let dir = scratch("secure-mtls");
    std::fs::create_dir_all(dir.join("patterns")).unwrap();
    std::fs::write(dir.join("patterns/small_then_large.cep"), PATTERN).unwrap();
    create_topic(&b, "cards", 1);
    create_topic(&b, "alerts", 1);
    let lines = std::fs::read(events(&dir)).unwrap();
    let records: Vec<&[u8]> = lines
        .split(|&c| c == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    let out: Vec<Out> = records
        .iter()
        .map(|v| Out {
            partition: None,
            key: None,
            value: v,
        })
        .collect();
    produce(&b, "cards", &out);
    let d = &broker.dir;
    let with_cert = format!(
        "protocol = \"ssl\"\n[kafka.tls]\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        d.join("broker.pem").display(),
        d.join("client.pem").display(),
        d.join("client.key").display()
    );
    let mut serve = Serve::start(&dir, &config(&b, &with_cert));
    serve.wait_ready(Duration::from_secs(60));
    let got = consume_until(&b, "alerts", Duration::from_secs(60), |g| g.len() >= 2);
    assert_eq!(got.len(), 2, "{}", serve.log());
    serve.signal("-TERM");
    assert!(
        serve.wait(Duration::from_secs(30)).success(),
        "{}",
        serve.log()
    );

    // Without the client certificate the TLS front refuses the handshake.
    let without = format!(
        "protocol = \"ssl\"\n[kafka.tls]\nca_file = \"{}\"\n",
        d.join("broker.pem").display()
    );
    let dir2 = scratch("secure-mtls-none");
    std::fs::create_dir_all(dir2.join("patterns")).unwrap();
    std::fs::write(dir2.join("patterns/small_then_large.cep"), PATTERN).unwrap();
    let t0 = Instant::now();
    let mut serve = Serve::start(&dir2, &config(&b, &without));
    let status = serve.wait(Duration::from_secs(30));
    assert!(!status.success());
    let log = serve.log();
    eprintln!(
        "mtls without a certificate: after {:?}: {}",
        t0.elapsed(),
        log.lines().last().unwrap_or_default()
    );
    assert!(
        log.contains("requires a client certificate (mutual TLS)")
            && log.contains("set kafka.tls.cert_file and kafka.tls.key_file"),
        "{log}"
    );
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "not at once: {:?}",
        t0.elapsed()
    );
}
