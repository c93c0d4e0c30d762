//! Request-body validation with the original's 422 shapes (`rest-api.md` §1.3): JSON only for
//! `application/json` and `application/*+json`, pydantic-style error objects otherwise.

use crate::errors::ApiError;
use actix_web::HttpRequest;
use serde_json::{json, Map, Value};

/// Expected JSON type of a body field.
#[derive(Clone, Copy)]
pub enum FieldType {
    Str,
    StrList,
    Object,
    /// A list of objects whose values are string lists (`IncomingSampleRequest.files`).
    EntryList,
}

pub struct Field {
    pub name: &'static str,
    pub ty: FieldType,
    pub required: bool,
    pub nullable: bool,
}

/// Parses and validates a JSON object body against `fields`; unknown fields are ignored.
pub fn parse_object(
    req: &HttpRequest,
    body: &[u8],
    fields: &[Field],
) -> Result<Map<String, Value>, ApiError> {
    let text = String::from_utf8_lossy(body).into_owned();
    if !is_json_content_type(req) {
        if body.is_empty() {
            return Err(missing_body());
        }
        return Err(ApiError::Validation(vec![json!({
            "type": "model_attributes_type",
            "loc": ["body"],
            "msg": "Input should be a valid dictionary or object to extract fields from",
            "input": text,
        })]));
    }
    if body.is_empty() {
        return Err(missing_body());
    }
    // Python decodes a UTF-8 byte-order mark away before parsing.
    let (body, text) = match body.strip_prefix(b"\xef\xbb\xbf") {
        Some(rest) => (rest, String::from_utf8_lossy(rest).into_owned()),
        None => (body, text),
    };
    if std::str::from_utf8(body).is_err() {
        // Python fails to decode such a body before any JSON parsing: a framework 400, not a 422.
        return Err(ApiError::Http {
            status: 400,
            detail: "There was an error parsing the body",
        });
    }
    // serde bounds its own recursion; `json_invalid` describes a refusal without recursing on
    // anything deeper than that bound (`pyjson::too_deep`).
    let value: Value = serde_json::from_slice(body).map_err(|e| json_invalid(&text, &e))?;
    let Value::Object(map) = value else {
        return Err(ApiError::Validation(vec![json!({
            "type": "model_attributes_type",
            "loc": ["body"],
            "msg": "Input should be a valid dictionary or object to extract fields from",
            "input": value,
        })]));
    };
    let mut errors = Vec::new();
    for f in fields {
        match map.get(f.name) {
            None if f.required => errors.push(json!({
                "type": "missing", "loc": ["body", f.name], "msg": "Field required", "input": Value::Object(map.clone()),
            })),
            None => {}
            Some(Value::Null) if f.nullable => {}
            Some(v) => check_type(f, v, &mut errors),
        }
    }
    if errors.is_empty() {
        Ok(map)
    } else {
        Err(ApiError::Validation(errors))
    }
}

fn check_type(f: &Field, v: &Value, errors: &mut Vec<Value>) {
    match f.ty {
        FieldType::Str if !v.is_string() => errors.push(json!({
            "type": "string_type", "loc": ["body", f.name], "msg": "Input should be a valid string", "input": v,
        })),
        FieldType::Object if !v.is_object() => errors.push(json!({
            "type": "dict_type", "loc": ["body", f.name], "msg": "Input should be a valid dictionary", "input": v,
        })),
        FieldType::StrList => match v {
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    if !item.is_string() {
                        errors.push(json!({
                            "type": "string_type", "loc": ["body", f.name, i],
                            "msg": "Input should be a valid string", "input": item,
                        }));
                    }
                }
            }
            _ => errors.push(json!({
                "type": "list_type", "loc": ["body", f.name], "msg": "Input should be a valid list", "input": v,
            })),
        },
        FieldType::EntryList => check_entry_list(f.name, v, errors),
        _ => {}
    }
}

fn check_entry_list(name: &str, v: &Value, errors: &mut Vec<Value>) {
    let Value::Array(entries) = v else {
        errors.push(json!({
            "type": "list_type", "loc": ["body", name], "msg": "Input should be a valid list", "input": v,
        }));
        return;
    };
    for (i, entry) in entries.iter().enumerate() {
        let Value::Object(map) = entry else {
            errors.push(json!({
                "type": "dict_type", "loc": ["body", name, i], "msg": "Input should be a valid dictionary", "input": entry,
            }));
            continue;
        };
        for (key, ids) in map {
            let Value::Array(items) = ids else {
                errors.push(json!({
                    "type": "list_type", "loc": ["body", name, i, key], "msg": "Input should be a valid list", "input": ids,
                }));
                continue;
            };
            for (j, item) in items.iter().enumerate() {
                if !item.is_string() {
                    errors.push(json!({
                        "type": "string_type", "loc": ["body", name, i, key, j],
                        "msg": "Input should be a valid string", "input": item,
                    }));
                }
            }
        }
    }
}

fn is_json_content_type(req: &HttpRequest) -> bool {
    let Some(ct) = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let mime = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
}

fn missing_body() -> ApiError {
    ApiError::Validation(vec![
        json!({ "type": "missing", "loc": ["body"], "msg": "Field required", "input": null }),
    ])
}

/// `json_invalid` with the character offset and message of Python's `json` module; when Python
/// would have accepted the text (`NaN`, huge numbers), serde's position in Python's words.
fn json_invalid(text: &str, e: &serde_json::Error) -> ApiError {
    let (offset, python_msg) =
        super::pyjson::python_json_error(text).unwrap_or_else(|| serde_position(text, e));
    ApiError::Validation(vec![json!({
        "type": "json_invalid",
        "loc": ["body", offset],
        "msg": "JSON decode error",
        "input": {},
        "ctx": { "error": python_msg },
    })])
}

fn serde_position(text: &str, e: &serde_json::Error) -> (usize, &'static str) {
    let offset = if e.is_eof() {
        text.chars().count()
    } else {
        let line_start: usize = text
            .split('\n')
            .take(e.line().saturating_sub(1))
            .map(|l| l.chars().count() + 1)
            .sum();
        (line_start + e.column().saturating_sub(1)).min(text.chars().count())
    };
    let msg = e.to_string();
    let python_msg = if msg.contains("key must be a string") {
        "Expecting property name enclosed in double quotes"
    } else if msg.contains("expected `:`") {
        "Expecting ':' delimiter"
    } else if msg.contains("expected `,` or") {
        "Expecting ',' delimiter"
    } else if msg.contains("trailing characters") {
        "Extra data"
    } else if msg.contains("EOF while parsing a string") {
        "Unterminated string starting at"
    } else {
        "Expecting value"
    };
    (offset, python_msg)
}

/// Lax bool of query parameters (`rest-api.md` §1.4).
pub fn parse_bool_param(name: &str, raw: &str) -> Result<bool, ApiError> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" | "t" | "y" => Ok(true),
        "false" | "0" | "no" | "off" | "f" | "n" => Ok(false),
        _ => Err(ApiError::Validation(vec![json!({
            "type": "bool_parsing", "loc": ["query", name],
            "msg": "Input should be a valid boolean, unable to interpret input", "input": raw,
        })])),
    }
}

/// Lax int of path/query parameters (`rest-api.md` §1.4): sign, whitespace, leading zeros, `1.0`.
pub fn parse_int_param(location: &str, name: &str, raw: &str) -> Result<i64, ApiError> {
    let t = raw.trim();
    if let Ok(v) = t.parse::<i64>() {
        return Ok(v);
    }
    if let Some(whole) = t.strip_suffix(".0").or_else(|| {
        t.split_once('.')
            .filter(|(_, f)| f.chars().all(|c| c == '0'))
            .map(|(w, _)| w)
    }) {
        if let Ok(v) = whole.parse::<i64>() {
            return Ok(v);
        }
    }
    Err(ApiError::Validation(vec![json!({
        "type": "int_parsing", "loc": [location, name],
        "msg": "Input should be a valid integer, unable to parse string as an integer", "input": raw,
    })]))
}
