use std::sync::Arc;

use super::*;
use crate::senml::decode_senml_at;
use talo_engine::Catalog;

fn f(name: &str, v: f64) -> (String, OwnedValue) {
    (name.into(), OwnedValue::F64(v))
}

#[test]
fn json_object_nested_and_times() {
    let rows = decode_json(br#"{"temp": 21.5, "co2": 415, "ok": true, "state": "idle", "pm": {"2_5": 3.1, "10": null}, "ts": "2025-11-25T00:00:01.5Z"}"#).unwrap();
    assert_eq!(rows.len(), 1);
    let r = &rows[0];
    assert_eq!(r.time, Some(1_764_028_801_500_000_000));
    assert!(r.fields.contains(&f("temp", 21.5)));
    assert!(
        r.fields.contains(&f("co2", 415.0)),
        "JSON numbers are floats"
    );
    assert!(r.fields.contains(&("ok".into(), OwnedValue::Bool(true))));
    assert!(
        r.fields
            .contains(&("state".into(), OwnedValue::String("idle".into())))
    );
    assert!(r.fields.contains(&f("pm.2_5", 3.1)));
    assert_eq!(r.fields.len(), 5, "nulls are skipped");
    // epoch by magnitude: s, ms, us, ns
    for (ts, want) in [
        ("1764028800", 1_764_028_800_000_000_000i64),
        ("1764028800123", 1_764_028_800_123_000_000),
        ("1764028800123456", 1_764_028_800_123_456_000),
        ("1764028800123456789", 1_764_028_800_123_456_789),
        ("1764028800.25", 1_764_028_800_250_000_000),
        ("\"1764028800123\"", 1_764_028_800_123_000_000),
    ] {
        let rows = decode_json(format!(r#"{{"v": 1, "time": {ts}}}"#).as_bytes()).unwrap();
        assert_eq!(rows[0].time, Some(want), "{ts}");
    }
    let rows = decode_json(br#"[{"v": 1, "timestamp": 1764028800}, {"v": 2}]"#).unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1].time, None);
}

#[test]
fn json_rejections() {
    for (bad, why) in [
        (&b"{"[..], "invalid JSON"),
        (b"42", "object"),
        (b"{}", "no field"),
        (br#"{"v": 1, "ts": "yesterday"}"#, "RFC 3339"),
        (br#"{"v": 1, "ts": 1, "time": 2}"#, "more than one"),
        (br#"[{"v": 1}, 3]"#, "item 1"),
        (br#"{"v": 1e999}"#, "invalid JSON"),
        (b"\xff\xfe", "invalid JSON"),
    ] {
        let e = decode_json(bad).unwrap_err();
        assert!(e.contains(why), "{:?}: {e}", String::from_utf8_lossy(bad));
    }
    let deep = format!("{}1{}", "{\"a\":".repeat(40), "}".repeat(40));
    assert!(decode_json(deep.as_bytes()).is_err());
}

#[test]
fn plain_values() {
    for (p, v) in [
        ("21.5", OwnedValue::F64(21.5)),
        (" 42\n", OwnedValue::F64(42.0)),
        ("true", OwnedValue::Bool(true)),
        ("ON", OwnedValue::Bool(true)),
        ("off", OwnedValue::Bool(false)),
        ("-1e3", OwnedValue::F64(-1000.0)),
    ] {
        assert_eq!(
            decode_value(p.as_bytes()).unwrap()[0].fields,
            vec![("value".to_string(), v)],
            "{p}"
        );
    }
    for bad in ["", "NaN", "inf", "hello", "1,5"] {
        assert!(decode_value(bad.as_bytes()).is_err(), "{bad}");
    }
}

// RFC 8428 §5.1.2: multiple data points
#[test]
fn senml_rfc_multiple_datapoints() {
    let pack = br#"[{"bn":"urn:dev:ow:10e2073a01080063:","n":"voltage","u":"V","v":120.1},{"n":"current","u":"A","v":1.2}]"#;
    let rows = decode_senml_at(pack, 1_764_028_800.0).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(
        rows[0].tags,
        vec![(
            "device".to_string(),
            "urn:dev:ow:10e2073a01080063:".to_string()
        )]
    );
    assert_eq!(rows[0].fields, vec![f("voltage", 120.1), f("current", 1.2)]);
    assert_eq!(
        rows[0].time,
        Some(1_764_028_800_000_000_000),
        "no time: now"
    );
}

// RFC 8428 §5.1.3: multiple measurements with base time and relative times
#[test]
fn senml_rfc_multiple_measurements() {
    let pack = br#"[
      {"bn":"urn:dev:ow:10e2073a0108006:","bt":1.276020076001e+09,"bu":"A","bver":5,"n":"voltage","u":"V","v":120.1},
      {"n":"current","t":-5,"v":1.2},
      {"n":"current","t":-4,"v":1.3},
      {"n":"current","t":-3,"v":1.4},
      {"n":"current","t":-2,"v":1.5},
      {"n":"current","t":-1,"v":1.6},
      {"n":"current","v":1.7}
    ]"#;
    let rows = decode_senml_at(pack, 0.0).unwrap();
    assert_eq!(rows.len(), 6);
    let last = rows
        .iter()
        .find(|r| r.time == Some(1_276_020_076_001_000_000))
        .unwrap();
    assert_eq!(last.fields, vec![f("voltage", 120.1), f("current", 1.7)]);
    let first = rows
        .iter()
        .find(|r| r.time == Some(1_276_020_071_001_000_000))
        .unwrap();
    assert_eq!(first.fields, vec![f("current", 1.2)]);
}

// RFC 8428 §5.1.5-style: booleans, strings, base values and sums
#[test]
fn senml_value_kinds_and_bases() {
    let pack = br#"[{"bn":"room1/","bt":1764028800,"bv":20,"n":"temp","v":1.5},{"n":"door","vb":true},{"n":"status","vs":"ok"},{"n":"energy","s":42}]"#;
    let rows = decode_senml_at(pack, 0.0).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(
        rows[0].fields,
        vec![
            f("temp", 21.5),
            ("door".into(), OwnedValue::Bool(true)),
            ("status".into(), OwnedValue::String("ok".into())),
            f("energy_sum", 42.0),
        ]
    );
    for (bad, why) in [
        (&br#"{"n":"x","v":1}"#[..], "array"),
        (b"[]", "empty"),
        (br#"[{"n":"x"}]"#, "no value"),
        (br#"[{"n":"x","v":"1"}]"#, "number"),
        (br#"[3]"#, "not an object"),
    ] {
        let e = decode_senml_at(bad, 0.0).unwrap_err();
        assert!(e.contains(why), "{e}");
    }
}

#[test]
fn auto_picks_by_content() {
    assert_eq!(
        decode(Format::Auto, b"21.5").unwrap()[0].fields,
        vec![f("value", 21.5)]
    );
    assert_eq!(
        decode(Format::Auto, br#"{"t": 1}"#).unwrap()[0].fields,
        vec![f("t", 1.0)]
    );
    let senml = decode(Format::Auto, br#"[{"n":"t","v":2}]"#).unwrap();
    assert_eq!(senml[0].fields, vec![f("t", 2.0)]);
    let json_arr = decode(Format::Auto, br#"[{"t":3}]"#).unwrap();
    assert_eq!(json_arr[0].fields, vec![f("t", 3.0)]);
    let lp = decode(Format::Auto, b"env,room=a t=4i 5").unwrap();
    assert_eq!(lp[0].table.as_deref(), Some("env"));
    assert_eq!(lp[0].time, Some(5));
    assert!(decode(Format::Auto, b"what is this").is_err());
    assert!(
        decode(Format::Json, &vec![b' '; MAX_PAYLOAD + 1])
            .unwrap_err()
            .contains("larger")
    );
}

#[test]
fn rows_reach_the_builder_with_route_defaults() {
    let mut b = BatchBuilder::new("house", Arc::new(Catalog::new())).unwrap();
    let ctx = MessageContext {
        table: "env",
        tags: &[("room".into(), "kitchen".into())],
        arrival_ns: 77,
    };
    let rows = decode(Format::Json, br#"[{"t": 21.5}, {"t": "warm"}]"#).unwrap();
    let (ok, errors) = push_rows(&rows, &ctx, &mut b, 1);
    assert_eq!(ok, 1);
    assert_eq!(errors.len(), 1);
    assert!(errors[0].contains("type conflict"), "{errors:?}");
    let wb = b.finish().unwrap();
    assert_eq!(wb.tables[0].table, "env");
    assert_eq!(wb.tables[0].batch.num_rows(), 1);
}

proptest::proptest! {
    /// No decoder panics on arbitrary bytes.
    #[test]
    fn decoders_never_panic(payload in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
        for fmt in [Format::Json, Format::Senml, Format::Line, Format::Value, Format::Auto] {
            let _ = decode(fmt, &payload);
        }
    }
}
