//! Avro records as the documents patterns read.
//!
//! Patterns read an Avro record exactly as they read JSON: a record is an
//! object (nested records by path, `card.id`), a union gives the value of
//! its branch (the `null` branch gives `null`), an enum its symbol as a
//! string, `timestamp-millis` / `-micros` / `-nanos` (and the local ones)
//! epoch milliseconds, so they work as `time` fields, `date` days since the
//! epoch, `decimal` a number (`12.34` for unscaled 1234 at scale 2), `uuid`
//! a string, `bytes` and `fixed` lowercase hex, `duration` an object of
//! months, days and millis. A field the writer's schema does not have is
//! simply absent: `missing`, as in JSON.
//!
//! The mapping walks the value together with the writer's schema, because
//! a decimal's scale is in the schema, not in the value.

use std::collections::HashMap;

use apache_avro::schema::{Name, Schema};
use apache_avro::types::Value as Avro;
use serde_json::{Map, Number, Value as Json};

/// Named types of a schema, to follow `Ref`s.
pub struct Names(HashMap<Name, Schema>);

impl Names {
    pub fn of(schema: &Schema) -> Result<Names, String> {
        let resolved = apache_avro::schema::ResolvedSchema::try_from(schema)
            .map_err(|e| format!("invalid Avro schema: {e}"))?;
        Ok(Names(
            resolved
                .get_names()
                .iter()
                .map(|(n, s)| (n.clone(), (*s).clone()))
                .collect(),
        ))
    }

    fn resolve<'a>(&'a self, schema: &'a Schema) -> &'a Schema {
        match schema {
            Schema::Ref { name } => self.0.get(name).unwrap_or(schema),
            s => s,
        }
    }
}

/// The document an Avro value reads as, written with `schema`.
pub fn to_json(value: &Avro, schema: &Schema, names: &Names) -> Json {
    let schema = names.resolve(schema);
    match value {
        Avro::Null => Json::Null,
        Avro::Boolean(b) => Json::Bool(*b),
        Avro::Int(i) | Avro::Date(i) | Avro::TimeMillis(i) => Json::from(*i),
        Avro::Long(l) | Avro::TimeMicros(l) => Json::from(*l),
        Avro::TimestampMillis(ms) | Avro::LocalTimestampMillis(ms) => Json::from(*ms),
        Avro::TimestampMicros(us) | Avro::LocalTimestampMicros(us) => {
            Json::from(us.div_euclid(1_000))
        }
        Avro::TimestampNanos(ns) | Avro::LocalTimestampNanos(ns) => {
            Json::from(ns.div_euclid(1_000_000))
        }
        Avro::Float(f) => number(*f as f64),
        Avro::Double(f) => number(*f),
        Avro::String(s) => Json::String(s.clone()),
        Avro::Uuid(u) => Json::String(u.to_string()),
        Avro::Bytes(b) | Avro::Fixed(_, b) => Json::String(hex(b)),
        Avro::Enum(_, symbol) => Json::String(symbol.clone()),
        Avro::Union(branch, inner) => {
            let variant = match schema {
                Schema::Union(u) => u.variants().get(*branch as usize).unwrap_or(schema),
                s => s,
            };
            to_json(inner, variant, names)
        }
        Avro::Array(items) => {
            let item = match schema {
                Schema::Array(a) => &a.items,
                s => s,
            };
            Json::Array(items.iter().map(|v| to_json(v, item, names)).collect())
        }
        Avro::Map(entries) => {
            let item = match schema {
                Schema::Map(m) => &m.types,
                s => s,
            };
            let mut keys: Vec<&String> = entries.keys().collect();
            keys.sort();
            Json::Object(
                keys.into_iter()
                    .map(|k| (k.clone(), to_json(&entries[k], item, names)))
                    .collect(),
            )
        }
        Avro::Record(fields) => {
            let mut obj = Map::new();
            for (name, v) in fields {
                let field_schema = match schema {
                    Schema::Record(r) => r
                        .lookup
                        .get(name)
                        .and_then(|i| r.fields.get(*i))
                        .map(|f| &f.schema),
                    _ => None,
                };
                let field_schema = field_schema.unwrap_or(&Schema::Null);
                obj.insert(name.clone(), to_json(v, field_schema, names));
            }
            Json::Object(obj)
        }
        Avro::Decimal(d) => {
            let scale = match schema {
                Schema::Decimal(d) => d.scale,
                _ => 0,
            };
            let unscaled = Vec::<u8>::try_from(d).map_or(f64::NAN, |b| twos_complement(&b));
            number(unscaled / 10f64.powi(scale as i32))
        }
        Avro::BigDecimal(b) => number(b.to_string().parse().unwrap_or(f64::NAN)),
        Avro::Duration(d) => serde_json::json!({
            "months": u32::from(d.months()),
            "days": u32::from(d.days()),
            "millis": u32::from(d.millis()),
        }),
    }
}

fn number(f: f64) -> Json {
    Number::from_f64(f).map_or(Json::Null, Json::Number)
}

/// A big-endian two's complement integer (a decimal's unscaled value).
fn twos_complement(bytes: &[u8]) -> f64 {
    let negative = bytes.first().is_some_and(|b| b & 0x80 != 0);
    let mut x = 0f64;
    for b in bytes {
        x = x * 256.0 + f64::from(if negative { !b } else { *b });
    }
    if negative {
        -(x + 1.0)
    } else {
        x
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use apache_avro::types::Value as Avro;

    fn read(schema: &str, value: Avro) -> Json {
        let schema = Schema::parse_str(schema).unwrap();
        let names = Names::of(&schema).unwrap();
        // Through the real encoder and decoder, as a topic carries it.
        let bytes = apache_avro::to_avro_datum(&schema, value).unwrap();
        let decoded = apache_avro::from_avro_datum(&schema, &mut &bytes[..], None).unwrap();
        to_json(&decoded, &schema, &names)
    }

    #[test]
    fn logical_types_read_as_documented() {
        let schema = r#"{"type": "record", "name": "R", "fields": [
          {"name": "us", "type": {"type": "long", "logicalType": "timestamp-micros"}},
          {"name": "ns", "type": {"type": "long", "logicalType": "timestamp-nanos"}},
          {"name": "day", "type": {"type": "int", "logicalType": "date"}},
          {"name": "neg", "type": {"type": "bytes", "logicalType": "decimal", "precision": 9, "scale": 3}},
          {"name": "raw", "type": {"type": "fixed", "name": "F", "size": 2}},
          {"name": "tags", "type": {"type": "array", "items": "string"}},
          {"name": "attrs", "type": {"type": "map", "values": ["null", "long"]}},
          {"name": "again", "type": "F"}]}"#;
        let value = Avro::Record(vec![
            ("us".into(), Avro::TimestampMicros(1_700_000_000_123_456)),
            ("ns".into(), Avro::TimestampNanos(1_700_000_000_123_456_789)),
            ("day".into(), Avro::Date(19_000)),
            // -1234 at scale 3.
            ("neg".into(), Avro::Decimal(vec![0xfb, 0x2e].into())),
            ("raw".into(), Avro::Fixed(2, vec![0xab, 0x01])),
            ("tags".into(), Avro::Array(vec![Avro::String("a".into())])),
            (
                "attrs".into(),
                Avro::Map(
                    [("k".to_string(), Avro::Union(1, Box::new(Avro::Long(7))))]
                        .into_iter()
                        .collect(),
                ),
            ),
            ("again".into(), Avro::Fixed(2, vec![0, 255])),
        ]);
        let doc = read(schema, value);
        assert_eq!(doc["us"], serde_json::json!(1_700_000_000_123i64));
        assert_eq!(doc["ns"], serde_json::json!(1_700_000_000_123i64));
        assert_eq!(doc["day"], serde_json::json!(19_000));
        assert_eq!(doc["neg"], serde_json::json!(-1.234));
        assert_eq!(doc["raw"], serde_json::json!("ab01"));
        assert_eq!(doc["tags"], serde_json::json!(["a"]));
        assert_eq!(doc["attrs"], serde_json::json!({"k": 7}));
        assert_eq!(
            doc["again"],
            serde_json::json!("00ff"),
            "a named type by reference"
        );
    }
}
