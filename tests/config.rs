//! `config.toml`: the shipped file works, unknown keys are rejected, and
//! every validation error names its key.

use cep::config::{Config, SinkConfig};

fn err(text: &str) -> String {
    Config::parse(text).expect_err("rejected")
}

const KAFKA: &str = r#"
[kafka]
brokers = "127.0.0.1:9092"
[[kafka.inputs]]
topic = "flights"
"#;

#[test]
fn the_shipped_config_is_a_working_example() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml");
    let c = Config::load(&path).unwrap();
    let k = c.kafka.as_ref().unwrap();
    assert_eq!(k.inputs[0].stream(), "flights");
    assert!(matches!(c.sinks["alerts"], SinkConfig::Kafka(_)));
    assert_eq!(c.serve.default_sinks, ["alerts", "stdout"]);
    assert_eq!(c.engine_config().unwrap().lateness_ms, 86_400_000);
}

#[test]
fn unknown_keys_are_rejected_with_their_name() {
    let e = err(&format!("{KAFKA}\nbogus_key = 1\n"));
    assert!(e.contains("bogus_key"), "{e}");
    let e = err(&format!(
        "{KAFKA}\n[sinks.ops]\ntype = \"webhook\"\nurl = \"http://x\"\nretries = 3\n"
    ));
    assert!(e.contains("retries"), "{e}");
    let e = err("[serve]\nlisten_on = \"x\"\n");
    assert!(e.contains("listen_on"), "{e}");
}

#[test]
fn validation_errors_name_the_key() {
    let cases = [
        (
            format!("{KAFKA}\n[serve]\ndefault_sinks = [\"nowhere\"]\n"),
            "serve.default_sinks: unknown sink `nowhere`",
        ),
        (
            format!("{KAFKA}\n[serve.routes]\ndelayed = [\"ops\"]\n"),
            "serve.routes.delayed: unknown sink `ops`",
        ),
        (
            format!("{KAFKA}\n[sinks.ops]\ntype = \"webhook\"\nurl = \"ftp://x\"\n"),
            "sinks.ops.url: expected an http:// or https:// URL",
        ),
        (
            format!(
                "{KAFKA}\n[sinks.ops]\ntype = \"webhook\"\nurl = \"http://x\"\n[sinks.ops.dead_letter]\ntopic = \"a\"\nfile = \"b\"\n"
            ),
            "sinks.ops.dead_letter: give exactly one of `topic` or `file`",
        ),
        (
            "[sinks.k]\ntype = \"kafka\"\ntopic = \"a\"\n".to_string(),
            "sinks.k: a kafka sink needs a [kafka] section",
        ),
        (
            "[kafka]\nbrokers = \"x\"\ninputs = []\n".to_string(),
            "kafka.inputs: give at least one input topic",
        ),
        (
            "[engine]\nlateness = \"soon\"\n".to_string(),
            "engine.lateness",
        ),
        (
            "[serve]\nlisten = \"0.0.0.0:9464\"\napi_unauthenticated = true\n".to_string(),
            "serve.api_unauthenticated: only allowed on a loopback address",
        ),
    ];
    for (text, want) in cases {
        let e = err(&text);
        assert!(e.contains(want), "{e:?} should contain {want:?}");
    }
    // A bad duration names the key (toml points at it).
    let e = err(&format!("{KAFKA}idle_timeout = \"5 minutes\"\n"));
    assert!(e.contains("idle_timeout") || e.contains("5 minutes"), "{e}");
}

#[test]
fn kafka_options_come_from_the_environment_too() {
    // An option no other test sets or reads: the environment is shared by
    // the test threads (`client.rack` was, and made another test flaky).
    std::env::set_var("CEP_KAFKA_OPTION_SOCKET_KEEPALIVE_ENABLE", "true");
    let c = Config::parse(KAFKA).unwrap();
    std::env::remove_var("CEP_KAFKA_OPTION_SOCKET_KEEPALIVE_ENABLE");
    assert_eq!(c.kafka.unwrap().options["socket.keepalive.enable"], "true");
}

/// `[kafka]` with `security` in place of the security keys.
fn kafka_with(security: &str) -> String {
    format!("[kafka]\nbrokers = \"b:9093\"\n{security}\n[[kafka.inputs]]\ntopic = \"t\"\n")
}

#[test]
fn security_keys_that_disagree_are_errors_naming_the_key() {
    let cases = [
        ("protocol = \"sasl_ssl\"", "kafka.protocol: \"sasl_ssl\" needs a [kafka.sasl] section"),
        (
            "[kafka.sasl]\nmechanism = \"PLAIN\"\nusername = \"u\"",
            "kafka.sasl: only used with protocol",
        ),
        ("[kafka.tls]\nca_file = \"Cargo.toml\"", "kafka.tls: only used with protocol"),
        (
            "protocol = \"ssl\"\n[kafka.tls]\ncert_file = \"Cargo.toml\"",
            "kafka.tls: give both `cert_file` and `key_file`",
        ),
        (
            "protocol = \"ssl\"\n[kafka.tls]\nca_file = \"/no/such/ca.pem\"",
            "kafka.tls.ca_file: /no/such/ca.pem",
        ),
        (
            "protocol = \"sasl_ssl\"\n[kafka.sasl]\nmechanism = \"SCRAM-SHA-1\"\nusername = \"u\"",
            "unknown variant `SCRAM-SHA-1`",
        ),
        (
            "protocol = \"sasl_ssl\"\n[kafka.sasl]\nmechanism = \"PLAIN\"\nusername = \"u\"\npassword = \"inline\"",
            "unknown field `password`",
        ),
        (
            "protocol = \"sasl_ssl\"\n[kafka.sasl]\nmechanism = \"PLAIN\"\nusername = \"u\"\npassword_env = \"A\"\npassword_file = \"B\"",
            "kafka.sasl: give one of `password_file` or `password_env`",
        ),
        ("protocol = \"tls\"", "unknown variant `tls`"),
    ];
    for (security, want) in cases {
        let e = err(&kafka_with(security));
        assert!(e.contains(want), "{security}: {e}");
    }
}

#[test]
fn a_secured_config_parses_and_shows_no_secret() {
    let c = Config::parse(&format!(
        "[serve]\napi_token = \"tok-secret-1\"\n{}\n[kafka.options]\n\"sasl.password\" = \"opt-secret-2\"\n\"client.rack\" = \"r1\"\n[sinks.ops]\ntype = \"webhook\"\nurl = \"http://x\"\nsecret = \"hmac-secret-3\"\n",
        kafka_with(
            "protocol = \"sasl_ssl\"\n[kafka.tls]\nca_file = \"Cargo.toml\"\n[kafka.sasl]\nmechanism = \"SCRAM-SHA-256\"\nusername = \"svc\"\npassword_file = \"/run/secrets/kafka\""
        )
    ))
    .unwrap();
    let k = c.kafka.as_ref().unwrap();
    assert_eq!(k.protocol, cep::config::Protocol::SaslSsl);
    assert_eq!(
        k.sasl.as_ref().unwrap().mechanism,
        cep::config::SaslMechanism::ScramSha256
    );
    let shown = format!("{c:?}");
    for secret in ["tok-secret-1", "opt-secret-2", "hmac-secret-3"] {
        assert!(!shown.contains(secret), "{secret} shown: {shown}");
    }
    assert!(shown.contains("r1"), "{shown}");
    // The password file is read when connecting: a missing one is named.
    let e = k.sasl.as_ref().unwrap().password().unwrap_err();
    assert!(
        e.contains("kafka.sasl.password_file /run/secrets/kafka"),
        "{e}"
    );
}

#[test]
fn avro_inputs_need_exactly_one_schema_source() {
    let input = |extra: &str| {
        format!("[kafka]\nbrokers = \"b:9092\"\n[[kafka.inputs]]\ntopic = \"t\"\n{extra}\n")
    };
    let cases = [
        (
            "format = \"avro\"",
            "kafka.inputs[0]: format = \"avro\" needs exactly one of schema_registry and schema_file",
        ),
        (
            "format = \"avro\"\nschema_file = \"a.avsc\"\nschema_registry = { url = \"http://r\" }",
            "needs exactly one of schema_registry and schema_file",
        ),
        (
            "schema_file = \"a.avsc\"",
            "kafka.inputs[0]: schema_registry and schema_file are for format = \"avro\"",
        ),
        (
            "format = \"avro\"\nschema_file = \"a.avsc\"\nrepartition_by = \"card.id\"",
            "repartition_by reads JSON records",
        ),
        (
            "format = \"avro\"\nschema_registry = { url = \"http://r\", token = \"x\" }",
            "unknown field `token`",
        ),
        ("format = \"protobuf\"", "unknown variant `protobuf`"),
    ];
    for (extra, want) in cases {
        let e = err(&input(extra));
        assert!(e.contains(want), "{extra}: {e}");
    }
    let ok = Config::parse(&input(
        "format = \"avro\"\nschema_registry = { url = \"http://r:8081\", username = \"u\", password_env = \"P\" }",
    ))
    .unwrap();
    let i = &ok.kafka.unwrap().inputs[0];
    assert_eq!(i.format, cep::config::ValueFormat::Avro);
    assert_eq!(i.schema_registry.as_ref().unwrap().url, "http://r:8081");
}
