//! Tests of the field extractor and its scanner.

use super::scan::string_stop;
use super::*;
use crate::event::lookup;
use proptest::prelude::*;

#[test]
fn bytes_that_are_not_utf8_are_refused_even_in_a_field_no_pattern_reads() {
    // The fuzzer's find (json_event): `"x\xf2"` inside a skipped array.
    let mut ex = Extractor::new();
    ex.add(&["card".to_string(), "id".to_string()]);
    let mut out = Captures::new();
    let bad = b"{\"carDag`s\":[\"x\xf2\"]}";
    assert!(serde_json::from_slice::<serde_json::Value>(bad).is_err());
    let e = ex.extract(bad, &mut out).unwrap_err();
    assert!(e.contains("not UTF-8 text (at byte 15)"), "{e}");
    ex.extract("{\"x\":\"caf\u{e9}\"}".as_bytes(), &mut out)
        .unwrap();
}

fn paths() -> Vec<Vec<String>> {
    [
        "card.id",
        "ts",
        "amount",
        "card",
        "tags.1",
        "deep.a.b",
        "missing.x",
        "s",
    ]
    .iter()
    .map(|p| p.split('.').map(str::to_string).collect())
    .collect()
}

/// Every path captured from `text` is what a full parse and `lookup`
/// find, as the engine's value.
fn assert_same_as_lookup(ex: &Extractor, slots: &[usize], text: &str) {
    let mut out = Captures::new();
    let got = ex.extract(text.as_bytes(), &mut out).unwrap();
    let doc: serde_json::Value = serde_json::from_str(text).unwrap();
    for (p, s) in paths().iter().zip(slots) {
        let want = lookup(&doc, p).map(|v| Field::of_json(v).to_value());
        let have = got.get(*s).map(Field::to_value);
        assert_eq!(format!("{have:?}"), format!("{want:?}"), "{text} {p:?}");
    }
}

fn extractor() -> (Extractor, Vec<usize>) {
    let mut ex = Extractor::new();
    let slots = paths().iter().map(|p| ex.add(p)).collect();
    (ex, slots)
}

#[test]
fn captures_what_lookup_finds() {
    let docs = [
        r#"{"card":{"id":"c1","x":[1,2]},"ts":5,"amount":1.5,"tags":["a","b"],"deep":{"a":{"b":null}}}"#,
        r#"{"card":"flat","ts":"2013-01-01T00:00:00Z","amount":-3,"tags":[],"deep":{"a":7}}"#,
        r#"{"amount":1,"amount":2,"other":{"ts":9}}"#,
        r#"{"card":{"id":"a"},"card":{"x":1}}"#,
        r#"{"card":{"id":"a"},"card":5, "s": "tab\there \"q\" \u00e9 \ud83d\ude00"}"#,
        r#" { "amount" : -0 , "ts": 18446744073709551615, "s": true, "tags": [0, {"a":1}] } "#,
        r#"{"amount": 1e2, "ts": -9223372036854775808, "card": [ ], "deep": {"a": {"b": [1, "x"]}}}"#,
        r#"{}"#,
    ];
    let (ex, slots) = extractor();
    for d in docs {
        assert_same_as_lookup(&ex, &slots, d);
    }
}

#[test]
fn rejects_what_is_not_one_object() {
    let mut ex = Extractor::new();
    ex.add(&["a".to_string()]);
    let mut out = Captures::new();
    for bad in [
        "[1]",
        "3",
        "{\"a\":1} x",
        "{\"a\":",
        "not json",
        "{\"a\":1e999}",
    ] {
        assert!(ex.extract(bad.as_bytes(), &mut out).is_err(), "{bad}");
    }
    let e = ex.extract(b"[1]", &mut out).unwrap_err();
    assert_eq!(e, "an event must be a JSON object");
    let e = ex.extract(b"{\"a\": tru}", &mut out).unwrap_err();
    assert_eq!(e, "invalid JSON: expected value at line 1 column 7");
}

#[test]
fn accepts_and_refuses_what_serde_json_does_on_edge_cases() {
    let (ex, _) = extractor();
    let mut out = Captures::new();
    for text in [
        r#"{"s":"\ud83d"}"#,
        r#"{"s":"\ud83dx"}"#,
        r#"{"s":"\udc00"}"#,
        r#"{"s":"\ud83d\u0041"}"#,
        r#"{"s":"\ud83d\ude00"}"#,
        r#"{"x":"\ud83d"}"#,
        r#"{"s":"\u00"}"#,
        r#"{"s":"\x"}"#,
        "{\"s\":\"a\tb\"}",
        "{\"s\":\"a\u{7f}b\"}",
        r#"{"amount":1.}"#,
        r#"{"amount":.5}"#,
        r#"{"amount":-}"#,
        r#"{"amount":01}"#,
        r#"{"amount":1e}"#,
        r#"{"amount":1e+5}"#,
        r#"{"amount":1E-400}"#,
        r#"{"amount":123456789012345678901234567890}"#,
        r#"{"amount":0.1234567890123456789012345}"#,
        r#"{"amount":-9223372036854775809}"#,
        r#"{"a":1,}"#,
        r#"{,}"#,
        r#"{"a" 1}"#,
        r#"{"a":[1,]}"#,
        r#"{"a":nulll}"#,
        "{\"a\":1}\n",
        "\u{feff}{}",
    ] {
        let serde = serde_json::from_str::<serde_json::Value>(text);
        let ours = ex.extract(text.as_bytes(), &mut out).map(|_| ());
        assert_eq!(ours.is_ok(), serde.is_ok(), "{text}: {ours:?} vs {serde:?}");
        if serde.is_ok() {
            assert_same_as_lookup(&ex, &extractor().1, text);
        }
    }
}

#[test]
fn nesting_is_limited_as_serde_json_limits_it() {
    let mut ex = Extractor::new();
    ex.add(&["a".to_string()]);
    let mut out = Captures::new();
    for depth in [126, 127, 128, 129] {
        let text = format!("{{\"a\":{}{}}}", "[".repeat(depth), "]".repeat(depth));
        let serde = serde_json::from_str::<serde_json::Value>(&text).is_ok();
        assert_eq!(
            ex.extract(text.as_bytes(), &mut out).is_ok(),
            serde,
            "{depth}"
        );
    }
}

/// Pieces of JSON, valid and not, that random texts are made of.
fn piece() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "{",
        "}",
        "[",
        "]",
        ",",
        ":",
        " ",
        "\n",
        "\"card\"",
        "\"id\"",
        "\"ts\"",
        "\"amount\"",
        "\"tags\"",
        "\"deep\"",
        "\"a\"",
        "\"b\"",
        "\"s\"",
        "\"x\\\"y\"",
        "\"\\u00e9\"",
        "\"\\ud83d\\ude00\"",
        "\"\\ud83d\"",
        "\"\\udc00x\"",
        "\"\\q\"",
        "\"\t\"",
        "0",
        "-0",
        "12",
        "-7",
        "1.5",
        "1e3",
        "2E-2",
        "1.",
        ".5",
        "01",
        "-",
        "1e400",
        "9223372036854775808",
        "-9223372036854775809",
        "true",
        "false",
        "null",
        "nul",
        "\"",
        "\\",
    ])
}

/// A well-formed object of the pieces above, to be mutated.
fn object() -> impl Strategy<Value = String> {
    let leaf = prop::sample::select(vec![
        "0",
        "-0",
        "12",
        "-3.25",
        "1e2",
        "18446744073709551615",
        "true",
        "null",
        "\"c1\"",
        "\"a\\\"b\"",
        "\"\\u00e9\"",
    ])
    .prop_map(str::to_string);
    let names = prop::sample::select(vec![
        "card", "id", "ts", "amount", "tags", "deep", "a", "b", "s", "1",
    ]);
    leaf.prop_recursive(4, 32, 4, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(","))),
            prop::collection::vec((names.clone(), inner), 0..5).prop_map(|v| {
                let members: Vec<String> = v.iter().map(|(n, x)| format!("\"{n}\": {x}")).collect();
                format!("{{{}}}", members.join(", "))
            }),
        ]
    })
    .prop_map(|v| {
        if v.starts_with('{') {
            v
        } else {
            format!("{{\"amount\": {v}}}")
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// A CSV row's cells, captured, are what the row's document holds.
    #[test]
    fn csv_cells_read_as_the_rows_document(
        cells in prop::collection::vec(prop::sample::select(vec![
            "", "NA", "12", "-0", "+5", "1.5", "-2.50", "1e3", "1e400", "inf", "NaN", "e",
            "abc", "1.2.3", " 7", "0x10", "\u{e9}t\u{e9}", "9223372036854775808",
        ]), 4),
        bad_utf8 in any::<bool>(),
    ) {
        let header: std::sync::Arc<[String]> =
            ["card", "amount", "ts", "amount"].iter().map(|s| s.to_string()).collect();
        let mut row = csv::ByteRecord::new();
        for (i, c) in cells.iter().enumerate() {
            if bad_utf8 && i == 2 {
                row.push_field(b"x\xff");
            } else {
                row.push_field(c.as_bytes());
            }
        }
        let row = crate::input::Cells::new(row.iter());
        let csv = crate::input::CsvRow { header: header.clone(), row, nulls: ["NA".to_string()].into() };
        let mut ex = Extractor::new();
        let paths = [vec!["card".to_string()], vec!["amount".to_string()], vec!["ts".to_string()], vec!["x".to_string()]];
        let slots: Vec<usize> = paths.iter().map(|p| ex.add(p)).collect();
        let mut out = Captures::new();
        let columns = ex.columns(&header);
        let text = ex.extract_row(&columns, &csv.row, &csv.nulls, &mut out);
        let doc = csv.to_doc();
        for (p, s) in paths.iter().zip(&slots) {
            let want = lookup(&doc, p).map(|v| Field::of_json(v).to_value());
            let have = text.get(*s).map(Field::to_value);
            prop_assert_eq!(format!("{have:?}"), format!("{want:?}"), "{:?} {:?}", cells, p);
        }
    }

    #[test]
    fn string_stops_where_a_byte_by_byte_search_does(
        bytes in prop::collection::vec(prop_oneof![
            Just(b'"'), Just(b'\\'), 0u8..0x20, 0x20u8..0x80, 0x80u8..=0xff, Just(b'a'),
        ], 0..40),
    ) {
        let naive = bytes.iter().position(|&b| b == b'"' || b == b'\\' || !(0x20..0x80).contains(&b));
        prop_assert_eq!(string_stop(&bytes), naive);
    }

    /// The scanner accepts exactly the objects serde_json parses, and on
    /// those captures what a full parse finds.
    #[test]
    fn agrees_with_serde_json(
        base in object(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), piece(), 0usize..3), 0..3),
    ) {
        let mut text = base;
        for (at, piece, how) in edits {
            let mut i = at.index(text.len() + 1);
            while !text.is_char_boundary(i) { i -= 1; }
            match how {
                0 => text.insert_str(i, piece),
                1 => { text.replace_range(i..(i + 1).min(text.len()), ""); while !text.is_char_boundary(i.min(text.len())) { i -= 1; } }
                _ => text.replace_range(i..(i + piece.len()).min(text.len()).max(i), piece),
            }
        }
        let (ex, slots) = extractor();
        let mut out = Captures::new();
        let ours = ex.extract(text.as_bytes(), &mut out).map(|_| ());
        match serde_json::from_str::<serde_json::Value>(&text) {
            Ok(v) if v.is_object() => {
                prop_assert!(ours.is_ok(), "refused {text:?}: {ours:?}");
                assert_same_as_lookup(&ex, &slots, &text);
            }
            Ok(_) => prop_assert_eq!(ours, Err("an event must be a JSON object".to_string())),
            Err(e) => prop_assert!(ours.is_err(), "accepted {text:?}, serde_json: {e}"),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// With bytes that are not UTF-8 anywhere (in strings, names, escaped
    /// strings, between values), the scanner still accepts exactly what
    /// serde_json accepts: it checks UTF-8 only inside strings.
    #[test]
    fn agrees_with_serde_json_on_any_bytes(
        base in object(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), prop::collection::vec(prop_oneof![
            Just(0xC3u8), Just(0xA9), Just(0xFF), Just(0xE2), Just(0x82), Just(0xAC), Just(0xF0), Just(0x9F),
            Just(b'"'), Just(b'\\'), Just(b'e'),
        ], 1..4)), 0..3),
    ) {
        let mut bytes = base.into_bytes();
        for (at, piece) in edits {
            let i = at.index(bytes.len() + 1);
            bytes.splice(i..i, piece);
        }
        let (ex, _) = extractor();
        let mut out = Captures::new();
        let ours = ex.extract(&bytes, &mut out).map(|_| ());
        match serde_json::from_slice::<serde_json::Value>(&bytes) {
            Ok(v) if v.is_object() => {
                prop_assert!(ours.is_ok(), "refused {bytes:?}: {ours:?}");
                assert_same_as_lookup(&ex, &extractor().1, std::str::from_utf8(&bytes).unwrap());
            }
            Ok(_) => prop_assert_eq!(ours, Err("an event must be a JSON object".to_string())),
            Err(e) => {
                prop_assert!(ours.is_err(), "accepted {bytes:?}, serde_json: {e}");
                if let Err(u) = std::str::from_utf8(&bytes) {
                    let want = format!("invalid JSON: not UTF-8 text (at byte {})", u.valid_up_to());
                    prop_assert_eq!(ours, Err(want));
                }
            }
        }
    }
}

#[test]
fn non_ascii_text_is_read_in_names_values_and_escaped_strings() {
    let mut ex = Extractor::new();
    let name = ex.add(&["caf\u{e9}".to_string()]);
    let value = ex.add(&["v".to_string()]);
    let escaped = ex.add(&["w".to_string()]);
    let mut out = Captures::new();
    let text =
        "{\"caf\u{e9}\":\"\u{1F600}x\",\"v\":\"\u{e9}t\u{e9}\",\"w\":\"a\\n\u{20AC}\\t\u{e9}\"}";
    let got = ex.extract(text.as_bytes(), &mut out).unwrap();
    assert_eq!(got.get(name), Some(Field::Str("\u{1F600}x")));
    assert_eq!(got.get(value), Some(Field::Str("\u{e9}t\u{e9}")));
    assert_eq!(got.get(escaped), Some(Field::Str("a\n\u{20AC}\t\u{e9}")));
    for (bad, at) in [
        (&b"{\"v\":\"\xe9t\"}"[..], 6),
        (b"{\"w\":\"a\\n\xff\"}", 9),
        (b"{\"v\":1,\xc3}", 7),
        (b"{\"\xc3\xa9\xc3\":1}", 4),
    ] {
        let e = ex.extract(bad, &mut out).unwrap_err();
        assert_eq!(e, format!("invalid JSON: not UTF-8 text (at byte {at})"));
    }
}

#[test]
fn csv_cells_that_are_not_utf8_read_alone_even_when_the_row_joins_into_utf8() {
    // `a\xC3` and `\xA9b` are not UTF-8, but the row's bytes joined are
    // (`aéb`): each cell must still read as its own replacement text, as
    // the row's document has it.
    let header: std::sync::Arc<[String]> = ["x", "y"].iter().map(|s| s.to_string()).collect();
    let mut row = csv::ByteRecord::new();
    row.push_field(b"a\xC3");
    row.push_field(b"\xA9b");
    let csv = crate::input::CsvRow {
        header: header.clone(),
        row: crate::input::Cells::new(row.iter()),
        nulls: [].into(),
    };
    let mut ex = Extractor::new();
    let x = ex.add(&["x".to_string()]);
    let y = ex.add(&["y".to_string()]);
    let mut out = Captures::new();
    let columns = ex.columns(&header);
    let got = ex.extract_row(&columns, &csv.row, &csv.nulls, &mut out);
    assert_eq!(got.get(x), Some(Field::Str("a\u{FFFD}")));
    assert_eq!(got.get(y), Some(Field::Str("\u{FFFD}b")));
    let doc = csv.to_doc();
    assert_eq!(doc["x"], "a\u{FFFD}");
}
