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
        Value::Number(n) => out.push_str(&n.to_string()),
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
        assert_eq!(
            dumps(&json!({"k": [1], "e": []}), Style::Indent4, true),
            "{\n    \"e\": [],\n    \"k\": [\n        1\n    ]\n}"
        );
    }
}
