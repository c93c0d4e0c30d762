//! JSON text exactly as Python's `json.dumps` writes it, for the bytes the original signs or
//! stores: keys optionally sorted, non-ASCII escaped as `\uXXXX`, and the three separator styles
//! (compact `,`/`:`, default `, `/`: `, indented).

use serde_json::Value;

#[derive(Clone, Copy)]
pub enum Style {
    /// `separators=(",", ":")`: the manifest.
    Compact,
    /// Python's default `", "`/`": "`: the state document, checkpoint manifests.
    Default,
    /// `indent=4`: algorithm records, `inspect` output.
    Indent4,
}

/// Serialises `value` the way `json.dumps(value, ensure_ascii=True, sort_keys=sort, ...)` does.
pub fn dumps(value: &Value, style: Style, sort_keys: bool) -> String {
    let mut out = String::new();
    write_value(&mut out, value, style, sort_keys, 0);
    out
}

fn write_value(out: &mut String, value: &Value, style: Style, sort: bool, depth: usize) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => match n.as_f64().filter(|_| n.is_f64()) {
            Some(f) => out.push_str(&python_float(f)),
            None => out.push_str(&n.to_string()),
        },
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            if items.is_empty() {
                out.push_str("[]");
                return;
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                separator(out, style, i == 0, depth + 1);
                write_value(out, item, style, sort, depth + 1);
            }
            closing(out, style, depth);
            out.push(']');
        }
        Value::Object(map) => {
            if map.is_empty() {
                out.push_str("{}");
                return;
            }
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            if sort {
                entries.sort_by(|a, b| a.0.cmp(b.0));
            }
            out.push('{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                separator(out, style, i == 0, depth + 1);
                write_string(out, k);
                out.push_str(match style {
                    Style::Compact => ":",
                    _ => ": ",
                });
                write_value(out, v, style, sort, depth + 1);
            }
            closing(out, style, depth);
            out.push('}');
        }
    }
}

/// A finite float as Python's `repr` writes it: the shortest digits that read back the same,
/// positional from 1e-4 up to below 1e16 (always with a fractional part), else `d.ddde±XX`.
fn python_float(f: f64) -> String {
    let scientific = format!("{:e}", f.abs());
    let (mantissa, exponent) = scientific.split_once('e').unwrap_or((&scientific, "0"));
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let point = exponent.parse::<i32>().unwrap_or(0) + 1;
    let sign = if f.is_sign_negative() { "-" } else { "" };
    let body = if !(-3..=16).contains(&point) {
        let exponent = point - 1;
        let (first, rest) = digits.split_at(1);
        let fraction = if rest.is_empty() {
            String::new()
        } else {
            format!(".{rest}")
        };
        let exp_sign = if exponent < 0 { '-' } else { '+' };
        format!("{first}{fraction}e{exp_sign}{:02}", exponent.abs())
    } else if point <= 0 {
        format!("0.{}{digits}", "0".repeat(point.unsigned_abs() as usize))
    } else if point as usize >= digits.len() {
        format!("{digits}{}.0", "0".repeat(point as usize - digits.len()))
    } else {
        let (int, frac) = digits.split_at(point as usize);
        format!("{int}.{frac}")
    };
    format!("{sign}{body}")
}

fn separator(out: &mut String, style: Style, first: bool, depth: usize) {
    match style {
        Style::Compact if !first => out.push(','),
        Style::Default if !first => out.push_str(", "),
        Style::Indent4 => {
            if !first {
                out.push(',');
            }
            out.push('\n');
            out.push_str(&"    ".repeat(depth));
        }
        _ => {}
    }
}

fn closing(out: &mut String, style: Style, depth: usize) {
    if let Style::Indent4 = style {
        out.push('\n');
        out.push_str(&"    ".repeat(depth));
    }
}

fn write_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (c as u32) > 0x7e => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn matches_python_output() {
        let v = json!({"b": [1, {"z": null, "a": true}], "a": "é😀\n\u{7f}", "c": {}, "d": []});
        // Expected strings written by CPython 3.11 json.dumps with the same arguments.
        assert_eq!(
            dumps(&v, Style::Compact, true),
            r#"{"a":"\u00e9\ud83d\ude00\n\u007f","b":[1,{"a":true,"z":null}],"c":{},"d":[]}"#
        );
        assert_eq!(
            dumps(&json!({"k": 1, "a": [1, 2]}), Style::Default, false),
            r#"{"k": 1, "a": [1, 2]}"#
        );
        let floats = json!([
            0.1,
            1e-05,
            1e16,
            1.5e16,
            1e15,
            0.0001,
            0.00001234,
            123456789012345680000.0,
            -2.5e-10,
            0.0,
            -0.0,
            2.0,
            1e22,
            5e-324,
            1.7976931348623157e308,
            0.30000000000000004,
            100.0,
            1234.5,
            7,
            -3
        ]);
        assert_eq!(
            dumps(&floats, Style::Compact, false),
            "[0.1,1e-05,1e+16,1.5e+16,1000000000000000.0,0.0001,1.234e-05,\
             1.2345678901234568e+20,-2.5e-10,0.0,-0.0,2.0,1e+22,5e-324,1.7976931348623157e+308,\
             0.30000000000000004,100.0,1234.5,7,-3]"
        );
        assert_eq!(
            dumps(&json!({"k": [1], "e": []}), Style::Indent4, true),
            "{\n    \"e\": [],\n    \"k\": [\n        1\n    ]\n}"
        );
    }
}
