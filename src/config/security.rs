//! `[kafka]`'s connection keys: `protocol`, `[kafka.tls]`, `[kafka.sasl]`,
//! and the raw librdkafka `options`, with the values that must stay secret.
//!
//! Secrets are held as [`Secret`]s (and secret-looking options are hidden
//! by [`KafkaOptions`]'s `Debug`), so no log line, error or metric prints
//! one. Passwords are read from the environment or a file when a client is
//! built, never from `config.toml` itself.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::service::KafkaSection;

/// A value that must not be shown: `Debug` and `Display` print `***`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    /// The secret itself, for where it is used (never for messages).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// librdkafka settings; `Debug` hides the values of secret-looking keys.
#[derive(Clone, Default, Deserialize)]
#[serde(transparent)]
pub struct KafkaOptions(pub BTreeMap<String, String>);

impl KafkaOptions {
    /// Whether a librdkafka key holds a secret (`sasl.password`,
    /// `ssl.key.password`, `ssl.key.pem`, `sasl.oauthbearer.client.secret`...).
    pub fn is_secret(key: &str) -> bool {
        ["password", "secret", "key.pem", "keystore", "jaas"]
            .iter()
            .any(|w| key.contains(w))
    }
}

impl std::ops::Deref for KafkaOptions {
    type Target = BTreeMap<String, String>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for KafkaOptions {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl std::fmt::Debug for KafkaOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, v)| {
                let shown = if KafkaOptions::is_secret(k) { "***" } else { v };
                (k, shown)
            }))
            .finish()
    }
}

/// `kafka.protocol`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    #[default]
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl Protocol {
    /// librdkafka's `security.protocol`.
    pub fn as_librdkafka(self) -> &'static str {
        match self {
            Protocol::Plaintext => "plaintext",
            Protocol::Ssl => "ssl",
            Protocol::SaslPlaintext => "sasl_plaintext",
            Protocol::SaslSsl => "sasl_ssl",
        }
    }

    pub fn uses_tls(self) -> bool {
        matches!(self, Protocol::Ssl | Protocol::SaslSsl)
    }

    pub fn uses_sasl(self) -> bool {
        matches!(self, Protocol::SaslPlaintext | Protocol::SaslSsl)
    }
}

/// `[kafka.tls]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file of the CA certificate(s) that signed the brokers'
    /// certificates. Default: the system's trust store (the usual CA
    /// bundle paths are probed), which is what public managed services
    /// need.
    pub ca_file: Option<PathBuf>,
    /// PEM file of the client certificate, for brokers that require mutual
    /// TLS. Needs `key_file`.
    pub cert_file: Option<PathBuf>,
    /// PEM file of the client certificate's private key.
    pub key_file: Option<PathBuf>,
    /// Environment variable holding the private key's password, if it is
    /// encrypted.
    pub key_password_env: Option<String>,
    /// Skip checking that a broker's certificate names the host connected
    /// to. Only for test clusters whose certificates lack the name.
    /// Default false.
    #[serde(default)]
    pub skip_hostname_check: bool,
}

impl TlsConfig {
    fn is_set(&self) -> bool {
        self.ca_file.is_some()
            || self.cert_file.is_some()
            || self.key_file.is_some()
            || self.key_password_env.is_some()
            || self.skip_hostname_check
    }
}

/// `[kafka.sasl]`: username and password, the password from the
/// environment or a file, never from `config.toml` itself.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SaslConfig {
    /// `"SCRAM-SHA-512"`, `"SCRAM-SHA-256"` or `"PLAIN"` (PLAIN sends the
    /// password as is: use it only with `sasl_ssl`).
    pub mechanism: SaslMechanism,
    pub username: String,
    /// Environment variable holding the password. Default
    /// `CEP_KAFKA_PASSWORD` when `password_file` is not given.
    pub password_env: Option<String>,
    /// File holding the password (a mounted secret); a trailing newline is
    /// ignored.
    pub password_file: Option<PathBuf>,
}

impl SaslConfig {
    /// Reads the password from its file or environment variable.
    pub fn password(&self) -> Result<Secret, String> {
        match (&self.password_file, &self.password_env) {
            (Some(_), Some(_)) => {
                Err("kafka.sasl: give one of `password_file` or `password_env`".into())
            }
            (Some(f), None) => std::fs::read_to_string(f)
                .map(|p| Secret(p.trim_end_matches(['\r', '\n']).to_string()))
                .map_err(|e| format!("kafka.sasl.password_file {}: {e}", f.display())),
            (None, env) => {
                let name = env.as_deref().unwrap_or(DEFAULT_PASSWORD_ENV);
                std::env::var(name).map(Secret).map_err(|_| {
                    format!(
                        "kafka.sasl: the password is read from the environment variable {name}, which is not set (or set kafka.sasl.password_file)"
                    )
                })
            }
        }
    }
}

/// Where the SASL password is read from by default.
pub const DEFAULT_PASSWORD_ENV: &str = "CEP_KAFKA_PASSWORD";

/// `kafka.sasl.mechanism`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum SaslMechanism {
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    #[serde(rename = "PLAIN")]
    Plain,
}

impl SaslMechanism {
    pub fn as_str(self) -> &'static str {
        match self {
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::Plain => "PLAIN",
        }
    }
}

/// The security keys of `[kafka]` agree with each other and name files
/// that exist (a setting that would be ignored is an error, not a surprise
/// at the first connection).
pub(super) fn validate_security(k: &KafkaSection) -> Result<(), String> {
    match (&k.sasl, k.protocol.uses_sasl()) {
        (None, true) => {
            return Err(format!(
                "kafka.protocol: {:?} needs a [kafka.sasl] section (mechanism, username, password_env or password_file)",
                k.protocol.as_librdkafka()
            ))
        }
        (Some(_), false) => {
            return Err(format!(
                "kafka.sasl: only used with protocol \"sasl_ssl\" or \"sasl_plaintext\", not {:?}",
                k.protocol.as_librdkafka()
            ))
        }
        _ => {}
    }
    if let Some(s) = &k.sasl {
        if s.username.is_empty() {
            return Err("kafka.sasl.username: must not be empty".into());
        }
        if s.password_env.is_some() && s.password_file.is_some() {
            return Err("kafka.sasl: give one of `password_file` or `password_env`".into());
        }
    }
    let t = &k.tls;
    if t.is_set() && !k.protocol.uses_tls() {
        return Err(format!(
            "kafka.tls: only used with protocol \"ssl\" or \"sasl_ssl\", not {:?}",
            k.protocol.as_librdkafka()
        ));
    }
    if t.cert_file.is_some() != t.key_file.is_some() {
        return Err(
            "kafka.tls: give both `cert_file` and `key_file` for a client certificate".into(),
        );
    }
    let files = [
        ("kafka.tls.ca_file", &t.ca_file),
        ("kafka.tls.cert_file", &t.cert_file),
        ("kafka.tls.key_file", &t.key_file),
    ];
    for (key, f) in files {
        if let Some(f) = f {
            std::fs::metadata(f).map_err(|e| format!("{key}: {}: {e}", f.display()))?;
        }
    }
    Ok(())
}
