//! Avro topics: record values decoded into the JSON documents patterns
//! read ([`crate::avro`]), before the task sees them.
//!
//! An input with a schema registry carries the Confluent wire format: a 0
//! byte, the writer schema's id (4 bytes, big-endian), the datum. Schemas
//! are fetched once per id (`GET /schemas/ids/{id}`) and kept; records
//! written with several versions of a schema mix freely (each is read with
//! its own writer schema, so a field a version lacks is `missing`). A
//! registry that cannot be reached, or answers with an error, is asked
//! again with backoff until it answers: the partition's records wait and
//! none is dropped. An id the registry does not know, or a datum that does
//! not decode, is a bad record: it goes to the dead-letter topic with its
//! bytes and the reason. An input with a schema file reads bare datums
//! written with that schema.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use apache_avro::Schema;

use crate::avro::Names;
use crate::compiler::schema::SchemaCheck;
use crate::config::{InputConfig, ValueFormat};

/// A writer schema, ready to decode with.
struct Writer {
    schema: Schema,
    names: Names,
}

impl Writer {
    fn parse(text: &str) -> Result<Writer, String> {
        let schema = Schema::parse_str(text).map_err(|e| format!("invalid Avro schema: {e}"))?;
        let names = Names::of(&schema)?;
        Ok(Writer { schema, names })
    }

    /// The datum as JSON text.
    fn decode(&self, mut datum: &[u8]) -> Result<Vec<u8>, String> {
        let value = apache_avro::from_avro_datum(&self.schema, &mut datum, None)
            .map_err(|e| format!("undecodable Avro datum: {e}"))?;
        let doc = crate::avro::to_json(&value, &self.schema, &self.names);
        Ok(serde_json::to_vec(&doc).expect("a document serialises"))
    }
}

enum Source {
    Fixed(Writer),
    Registry(Registry),
}

struct Registry {
    url: String,
    auth: Option<(String, Option<String>)>,
    known: Mutex<HashMap<u32, Arc<Writer>>>,
}

/// What became of a record value.
pub enum Decoded {
    /// Not an Avro input: the value as it is.
    Plain,
    /// The record as JSON text.
    Json(Vec<u8>),
    /// Why it cannot be read.
    Bad(String),
}

/// The decoders of the service's Avro inputs, by topic.
pub struct Decoders {
    by_topic: HashMap<String, Source>,
    client: reqwest::Client,
}

impl Decoders {
    /// Reads the schema files; registry inputs start with nothing known.
    pub fn new(inputs: &[InputConfig]) -> Result<Decoders, String> {
        let mut by_topic = HashMap::new();
        for i in inputs.iter().filter(|i| i.format == ValueFormat::Avro) {
            let source = match (&i.schema_file, &i.schema_registry) {
                (Some(file), _) => {
                    let text = std::fs::read_to_string(file)
                        .map_err(|e| format!("{}: {e}", file.display()))?;
                    Source::Fixed(
                        Writer::parse(&text).map_err(|e| format!("{}: {e}", file.display()))?,
                    )
                }
                (None, Some(r)) => {
                    let password = match &r.password_env {
                        Some(var) => Some(std::env::var(var).map_err(|_| {
                            format!("schema_registry.password_env: ${var} is not set")
                        })?),
                        None => None,
                    };
                    Source::Registry(Registry {
                        url: r.url.trim_end_matches('/').to_string(),
                        auth: r.username.clone().map(|u| (u, password)),
                        known: Mutex::new(HashMap::new()),
                    })
                }
                (None, None) => return Err(format!("{}: no schema for Avro", i.topic)),
            };
            by_topic.insert(i.topic.clone(), source);
        }
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| format!("schema registry client: {e}"))?;
        Ok(Decoders { by_topic, client })
    }

    /// Decodes a value of `topic` (fetching its writer schema first if it
    /// is new).
    pub async fn decode(&self, topic: &str, value: Option<&[u8]>) -> Decoded {
        let Some(source) = self.by_topic.get(topic) else {
            return Decoded::Plain;
        };
        let Some(value) = value else {
            return Decoded::Plain; // the task reports an empty record
        };
        let done = match source {
            Source::Fixed(w) => w.decode(value),
            Source::Registry(r) => match wire_header(value) {
                Err(e) => Err(e),
                Ok((id, datum)) => match self.writer(r, id).await {
                    Ok(w) => w.decode(datum),
                    Err(e) => Err(e),
                },
            },
        };
        match done {
            Ok(json) => Decoded::Json(json),
            Err(e) => Decoded::Bad(e),
        }
    }

    /// The writer schema `id`, from the cache or the registry.
    async fn writer(&self, r: &Registry, id: u32) -> Result<Arc<Writer>, String> {
        if let Some(w) = r.known.lock().expect("not poisoned").get(&id) {
            return Ok(w.clone());
        }
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.fetch(r, id).await {
                Ok(Some(text)) => {
                    let w = Arc::new(Writer::parse(&text)?);
                    r.known.lock().expect("not poisoned").insert(id, w.clone());
                    return Ok(w);
                }
                Ok(None) => return Err(format!("schema id {id} is not in the registry")),
                Err(e) => {
                    tracing::warn!(url = %r.url, id, error = %e, retry_in = ?backoff, "schema registry unavailable; records wait");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
    }

    /// `Ok(None)`: the registry does not know the id.
    async fn fetch(&self, r: &Registry, id: u32) -> Result<Option<String>, String> {
        let mut req = self.client.get(format!("{}/schemas/ids/{id}", r.url));
        if let Some((user, password)) = &r.auth {
            req = req.basic_auth(user, password.as_ref());
        }
        let resp = req.send().await.map_err(|e| e.to_string())?;
        let status = resp.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(format!("HTTP {status}"));
        }
        let bytes = resp.bytes().await.map_err(|e| e.to_string())?;
        let body: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| format!("registry answer: {e}"))?;
        match body.get("schema").and_then(|s| s.as_str()) {
            Some(s) => Ok(Some(s.to_string())),
            None => Err("no `schema` in the registry's answer".into()),
        }
    }
}

/// The schema id and datum of a Confluent-framed value.
fn wire_header(value: &[u8]) -> Result<(u32, &[u8]), String> {
    match value {
        [0, a, b, c, d, datum @ ..] => Ok((u32::from_be_bytes([*a, *b, *c, *d]), datum)),
        [m, ..] if *m != 0 => Err(format!(
            "not the Confluent Avro wire format (magic byte {m}, expected 0)"
        )),
        _ => Err("too short for the Confluent Avro wire format".into()),
    }
}

/// The schema each Avro input's patterns are checked against: the schema
/// file, or the registry's latest schema of the subject `<topic>-value`.
/// A registry that does not answer within a few attempts, or has no such
/// subject yet, leaves the input unchecked (logged): decoding does not
/// depend on it.
pub async fn latest_schemas(inputs: &[InputConfig]) -> Vec<(String, Arc<SchemaCheck>)> {
    let mut out = Vec::new();
    for i in inputs.iter().filter(|i| i.format == ValueFormat::Avro) {
        let text = match (&i.schema_file, &i.schema_registry) {
            (Some(file), _) => std::fs::read_to_string(file).ok(),
            (None, Some(r)) => latest(r, &i.topic).await,
            (None, None) => None,
        };
        match text.map(|t| SchemaCheck::parse(&t)) {
            Some(Ok(check)) => out.push((i.stream().to_string(), Arc::new(check))),
            Some(Err(e)) => {
                tracing::warn!(topic = %i.topic, error = %e, "patterns not checked against the schema")
            }
            None => tracing::warn!(topic = %i.topic, "no schema to check the patterns against"),
        }
    }
    out
}

/// `GET /subjects/<topic>-value/versions/latest`, a few attempts.
async fn latest(r: &crate::config::SchemaRegistry, topic: &str) -> Option<String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .ok()?;
    let url = format!(
        "{}/subjects/{topic}-value/versions/latest",
        r.url.trim_end_matches('/')
    );
    let password = r.password_env.as_ref().and_then(|v| std::env::var(v).ok());
    let mut backoff = Duration::from_millis(200);
    for _ in 0..5 {
        let mut req = client.get(&url);
        if let Some(user) = &r.username {
            req = req.basic_auth(user, password.as_ref());
        }
        match req.send().await {
            Ok(resp) if resp.status() == reqwest::StatusCode::NOT_FOUND => return None,
            Ok(resp) if resp.status().is_success() => {
                let body: serde_json::Value =
                    serde_json::from_slice(&resp.bytes().await.ok()?).ok()?;
                return body.get("schema")?.as_str().map(str::to_string);
            }
            Ok(resp) => tracing::warn!(%url, status = %resp.status(), "schema registry"),
            Err(e) => tracing::warn!(%url, error = %e, "schema registry"),
        }
        tokio::time::sleep(backoff).await;
        backoff *= 2;
    }
    None
}

/// Every pattern of `set` against the schema of the stream it reads: all
/// problems of all patterns, rendered with line, column and caret against
/// each pattern's canonical source.
pub fn check_patterns(
    schemas: &[(String, Arc<SchemaCheck>)],
    set: &[crate::compiler::Automaton],
) -> Result<(), String> {
    let mut report = String::new();
    for a in set {
        let Ok(file) = crate::dsl::parser::parse(&a.source) else {
            continue;
        };
        let errors: Vec<_> = schemas
            .iter()
            .flat_map(|(stream, check)| check.check(&file, Some(stream)))
            .collect();
        if !errors.is_empty() {
            let d = crate::dsl::Diagnostics {
                origin: format!("pattern {}", a.name),
                source: a.source.clone(),
                errors,
            };
            report.push_str(&d.render());
        }
    }
    if report.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "patterns disagree with their input's Avro schema:\n{report}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEMA: &str = r#"{"type": "record", "name": "E", "fields": [
      {"name": "id", "type": "string"}, {"name": "n", "type": "long"}]}"#;

    fn input(toml_text: &str) -> InputConfig {
        toml::from_str(toml_text).unwrap()
    }

    #[tokio::test]
    async fn a_schema_file_decodes_bare_datums_and_refuses_others() {
        let path = std::env::temp_dir().join(format!("cep-avro-{}.avsc", std::process::id()));
        std::fs::write(&path, SCHEMA).unwrap();
        let i = input(&format!(
            "topic = \"t\"\nformat = \"avro\"\nschema_file = \"{}\"",
            path.display()
        ));
        let d = Decoders::new(&[i, input("topic = \"json\"")]).unwrap();
        let schema = Schema::parse_str(SCHEMA).unwrap();
        let mut r = apache_avro::types::Record::new(&schema).unwrap();
        r.put("id", "a");
        r.put("n", 5i64);
        let datum = apache_avro::to_avro_datum(&schema, r).unwrap();
        match d.decode("t", Some(&datum)).await {
            Decoded::Json(j) => assert_eq!(j, br#"{"id":"a","n":5}"#),
            _ => panic!("decodes"),
        }
        match d.decode("t", Some(&[0x07])).await {
            Decoded::Bad(why) => assert!(why.contains("undecodable Avro datum"), "{why}"),
            _ => panic!("a short datum is bad"),
        }
        assert!(matches!(
            d.decode("json", Some(b"{}")).await,
            Decoded::Plain
        ));
    }

    #[test]
    fn the_wire_header_is_checked() {
        assert_eq!(wire_header(&[0, 0, 0, 0, 9, 1]).unwrap(), (9, &[1u8][..]));
        assert!(wire_header(&[1, 0]).unwrap_err().contains("magic byte 1"));
        assert!(wire_header(&[0, 0]).unwrap_err().contains("too short"));
    }
}
