use std::sync::Arc;

use super::*;
use talo_engine::Catalog;

fn one(line: &str) -> ParsedLine<'_> {
    let mut it = parse_lines(line.as_bytes());
    let (_, p) = it
        .next()
        .expect("a point")
        .unwrap_or_else(|e| panic!("{line}: {e:?}"));
    assert!(it.next().is_none());
    p
}

fn err(line: &str) -> String {
    match parse_lines(line.as_bytes()).next() {
        Some(Err(e)) => e.reason,
        other => panic!("{line:?} should fail, got {other:?}"),
    }
}

#[test]
fn basic_point() {
    let p = one(
        "env,building=b1,room=kitchen temp=21.5,co2=415i,ok=true,name=\"x\" 1700000000000000000",
    );
    assert_eq!(p.measurement, "env");
    assert_eq!(
        p.tags,
        vec![
            ("building".into(), "b1".into()),
            ("room".into(), "kitchen".into())
        ]
    );
    assert_eq!(
        p.fields,
        vec![
            ("temp".into(), LpValue::F64(21.5)),
            ("co2".into(), LpValue::I64(415)),
            ("ok".into(), LpValue::Bool(true)),
            ("name".into(), LpValue::String("x".into())),
        ]
    );
    assert_eq!(p.timestamp, Some(1_700_000_000_000_000_000));
}

#[test]
fn spec_escapes() {
    // from the InfluxDB line protocol reference
    let p = one(r#"my\ Measurement fieldKey="string value""#);
    assert_eq!(p.measurement, "my Measurement");
    let p = one(
        r#"myMeasurement,tag\ Key1=tag\ Value1,tag\,Key2=tag\=Value2 field\=Key="str\"ing\\value""#,
    );
    assert_eq!(p.tags[0], ("tag Key1".into(), "tag Value1".into()));
    assert_eq!(p.tags[1], ("tag,Key2".into(), "tag=Value2".into()));
    assert_eq!(
        p.fields[0],
        (
            "field=Key".into(),
            LpValue::String(r#"str"ing\value"#.into())
        )
    );
    let p = one(r#"my\,Measurement fieldKey="Shaking \"hands\"""#);
    assert_eq!(p.measurement, "my,Measurement");
    assert_eq!(p.fields[0].1, LpValue::String(r#"Shaking "hands""#.into()));
    // a backslash before another character is literal
    let p = one(r#"m\a,t=a\b f="c:\path" 1"#);
    assert_eq!(p.measurement, r"m\a");
    assert_eq!(p.tags[0].1, r"a\b");
    assert_eq!(p.fields[0].1, LpValue::String(r"c:\path".into()));
    // an emoji measurement and a string with spaces, commas and equals
    let p = one("🌡,k=v f=\"a, b = c\"");
    assert_eq!(p.measurement, "🌡");
    assert_eq!(p.fields[0].1, LpValue::String("a, b = c".into()));
}

#[test]
fn numbers_and_booleans() {
    for (s, v) in [
        ("1", LpValue::F64(1.0)),
        ("-1.5", LpValue::F64(-1.5)),
        ("1e3", LpValue::F64(1000.0)),
        ("-1.2E-3", LpValue::F64(-0.0012)),
        (".5", LpValue::F64(0.5)),
        ("-42i", LpValue::I64(-42)),
        ("9223372036854775807i", LpValue::I64(i64::MAX)),
        ("18446744073709551615u", LpValue::U64(u64::MAX)),
    ] {
        assert_eq!(one(&format!("m f={s}")).fields[0].1, v, "{s}");
    }
    for s in ["t", "T", "true", "True", "TRUE"] {
        assert_eq!(one(&format!("m f={s}")).fields[0].1, LpValue::Bool(true));
    }
    for s in ["f", "F", "false", "False", "FALSE"] {
        assert_eq!(one(&format!("m f={s}")).fields[0].1, LpValue::Bool(false));
    }
    for bad in [
        "9223372036854775808i",
        "-1u",
        "1.5i",
        "tRUE",
        "NaN",
        "inf",
        "-Infinity",
        "1e400",
        "0x10",
        "abc",
        "1i2",
    ] {
        let e = err(&format!("m f={bad}"));
        assert!(e.contains("invalid value"), "{bad}: {e}");
    }
}

#[test]
fn malformed_lines() {
    for (line, want) in [
        ("m", "missing fields"),
        ("m ", "missing fields"),
        ("m,t=1", "missing fields"),
        ("m,t f=1", "no value"),
        ("m,=v f=1", "empty tag key"),
        ("m,t= f=1", "empty value"),
        ("m f", "no value"),
        ("m f=", "empty value"),
        ("m =1", "empty field key"),
        ("m f=\"open", "unterminated"),
        ("m f=1 12ab", "invalid timestamp"),
        ("m f=1 1 2", "unexpected text"),
        (",t=1 f=1", "missing measurement"),
        ("m f=1,", "no value"),
    ] {
        let e = err(line);
        assert!(e.contains(want), "{line:?}: {e}");
    }
}

#[test]
fn comments_blank_lines_crlf_and_numbering() {
    let body = "# comment\n\nm f=1 1\r\n  m f=2 2\nbad\n\tm f=3\n";
    let items: Vec<_> = parse_lines(body.as_bytes()).collect();
    assert_eq!(items.len(), 4);
    assert_eq!(items[0].as_ref().unwrap().0, 3);
    assert_eq!(items[1].as_ref().unwrap().0, 4);
    assert_eq!(items[2].as_ref().unwrap_err().line, 5);
    let (n, p) = items[3].as_ref().unwrap();
    assert_eq!((*n, p.timestamp), (6, None));
}

#[test]
fn multi_line_strings_keep_line_numbers() {
    let body = "m s=\"a\nb\" 1\nm f=1 2\nbroken\n";
    let items: Vec<_> = parse_lines(body.as_bytes()).collect();
    assert_eq!(
        items[0].as_ref().unwrap().1.fields[0].1,
        LpValue::String("a\nb".into())
    );
    assert_eq!(items[1].as_ref().unwrap().0, 3);
    assert_eq!(items[2].as_ref().unwrap_err().line, 4);
}

#[test]
fn invalid_utf8_is_a_line_error() {
    let mut body = b"m f=1 1\n".to_vec();
    body.extend_from_slice(b"m\xff f=1 2\nm f=\"\xfe\" 3\nm f=4 4\n");
    let items: Vec<_> = parse_lines(&body).collect();
    assert_eq!(items.len(), 4);
    assert!(items[1].as_ref().unwrap_err().reason.contains("UTF-8"));
    assert!(items[2].as_ref().unwrap_err().reason.contains("UTF-8"));
    assert_eq!(items[3].as_ref().unwrap().1.timestamp, Some(4));
}

#[test]
fn write_lines_collects_rejections_with_line_numbers() {
    let mut b = BatchBuilder::new("db", Arc::new(Catalog::new())).unwrap();
    let body = b"env,room=a t=1 10\nenv,room=a t=1i 20\nenv t=2 9223372036854775807\nenv t=3\nenv v=NaN 1\n";
    let errors = write_lines(body, Precision::Seconds, 77, &mut b);
    let lines: Vec<usize> = errors.iter().map(|e| e.line).collect();
    assert_eq!(lines, vec![2, 3, 5], "{errors:?}");
    assert!(errors[0].reason.contains("type conflict"));
    assert!(errors[1].reason.contains("out of range"));
    assert_eq!(b.rows(), 2);
    let wb = b.finish().unwrap();
    let t = &wb.tables[0];
    assert_eq!(t.row_ids, vec![1, 4]);
    use arrow::array::AsArray;
    use arrow::datatypes::TimestampNanosecondType;
    let times = t
        .batch
        .column_by_name("time")
        .unwrap()
        .as_primitive::<TimestampNanosecondType>();
    assert_eq!(times.values().to_vec(), vec![10_000_000_000, 77]);
}

proptest::proptest! {
    /// The parser never panics, whatever the bytes, and reports at most one result per line.
    #[test]
    fn never_panics(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400)) {
        let lines = body.iter().filter(|&&b| b == b'\n').count() + 1;
        let n = parse_lines(&body).count();
        proptest::prop_assert!(n <= lines);
    }

    /// Points written with escapes parse back to the same names and values.
    #[test]
    fn escape_roundtrip(m in "[a-z ,=]{1,12}", k in "[a-z ,=]{1,8}", v in "[a-z ,=]{1,8}", s in "[a-z \"\\\\,=]{0,12}", x in -1e9f64..1e9) {
        let esc = |t: &str, chars: &[char]| t.chars().fold(String::new(), |mut o, c| { if chars.contains(&c) { o.push('\\'); } o.push(c); o });
        // a measurement may not end in a backslash that would escape the next separator
        proptest::prop_assume!(!m.ends_with('\\') && !m.starts_with('#') && !m.starts_with(' '));
        let line = format!("{},{}={} f={:?},s=\"{}\" 5", esc(&m, &[',', ' ']), esc(&k, &[',', '=', ' ']), esc(&v, &[',', '=', ' ']), x, esc(&s, &['"', '\\']));
        let p = one(&line);
        proptest::prop_assert_eq!(p.measurement.as_ref(), m.as_str());
        proptest::prop_assert_eq!(p.tags[0].0.as_ref(), k.as_str());
        proptest::prop_assert_eq!(p.tags[0].1.as_ref(), v.as_str());
        proptest::prop_assert_eq!(&p.fields[0].1, &LpValue::F64(x));
        proptest::prop_assert_eq!(&p.fields[1].1, &LpValue::String(s.clone().into()));
    }
}
