//! Parameter tables (`additional_parameters`, `training_parameters`, `benchmark_outputs`) and
//! their validation rules, `algorithms.md` §1.5. The same rules re-validate stored records when
//! the API serves them (`rest-api.md` A1), so they work on JSON values.

use serde_json::{json, Map, Number, Value};

pub const PARAM_TYPES: [&str; 13] = [
    "string",
    "int",
    "float",
    "bool",
    "int_range",
    "float_range",
    "string_enum",
    "int_enum",
    "float_enum",
    "string_list",
    "int_list",
    "float_list",
    "bool_list",
];

#[derive(Clone, Copy, PartialEq)]
enum Base {
    Str,
    Int,
    Float,
    Bool,
    List,
}

fn base_of(ty: &str) -> Base {
    match ty {
        "string" | "string_enum" => Base::Str,
        "int" | "int_range" | "int_enum" => Base::Int,
        "float" | "float_range" | "float_enum" => Base::Float,
        "bool" => Base::Bool,
        _ => Base::List,
    }
}

fn base_name(b: Base) -> &'static str {
    match b {
        Base::Str => "str",
        Base::Int => "int",
        Base::Float => "float",
        Base::Bool => "bool",
        Base::List => "list",
    }
}

fn is_base(b: Base, v: &Value) -> bool {
    match b {
        Base::Str => v.is_string(),
        Base::Int => v.is_i64() || v.is_u64() || v.is_boolean(),
        Base::Float => v.as_number().is_some_and(Number::is_f64),
        Base::Bool => v.is_boolean(),
        Base::List => v.is_array(),
    }
}

/// Python `==` across numbers and booleans (`1 == 1.0 == True`).
fn py_eq(a: &Value, b: &Value) -> bool {
    fn num(v: &Value) -> Option<f64> {
        match v {
            Value::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
            Value::Number(n) => n.as_f64(),
            _ => None,
        }
    }
    match (num(a), num(b)) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

/// `name` with `_`/`-` as spaces, whitespace collapsed, first letter upper-cased.
pub fn derive_displayed_name(name: &str) -> String {
    let spaced: String = name
        .chars()
        .map(|c| if c == '_' || c == '-' { ' ' } else { c })
        .collect();
    let collapsed = spaced.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut chars = collapsed.chars();
    match chars.next() {
        None => name.to_string(),
        Some(first) => first.to_uppercase().chain(chars).collect(),
    }
}

/// Lax boolean of the config schema: booleans, 0/1, and the usual words.
pub fn lax_bool(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::Number(n) if n.as_f64() == Some(0.0) => Some(false),
        Value::Number(n) if n.as_f64() == Some(1.0) => Some(true),
        Value::String(s) => match s.to_ascii_lowercase().as_str() {
            "true" | "yes" | "y" | "on" | "t" | "1" => Some(true),
            "false" | "no" | "n" | "off" | "f" | "0" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

/// The coercion pydantic's smart unions apply to a `default` array.
fn coerce_default_array(items: &[Value], at: &str) -> Result<Value, String> {
    let any_str = items.iter().any(Value::is_string);
    let all_str = items.iter().all(Value::is_string);
    if any_str && !all_str {
        return Err(format!(
            "{at}: a list mixing strings with other values is not allowed"
        ));
    }
    if items.iter().any(Value::is_object) {
        return Err(format!("{at}: tables are not allowed here"));
    }
    let numeric = items.iter().all(|v| v.is_number() || v.is_boolean());
    let any_float = items
        .iter()
        .any(|v| v.as_number().is_some_and(Number::is_f64));
    let all_bool = items.iter().all(Value::is_boolean);
    if numeric && !items.is_empty() && !all_bool {
        let out: Vec<Value> = items
            .iter()
            .map(|v| {
                let f = match v {
                    Value::Bool(b) => f64::from(u8::from(*b)),
                    other => other.as_f64().unwrap_or_default(),
                };
                if any_float {
                    json!(f)
                } else {
                    json!(f as i64)
                }
            })
            .collect();
        return Ok(Value::Array(out));
    }
    Ok(Value::Array(items.to_vec()))
}

fn numeric_or_null(cfg: &Map<String, Value>, key: &str, at: &str) -> Result<Value, String> {
    match cfg.get(key) {
        None | Some(Value::Null) => Ok(Value::Null),
        Some(v @ Value::Number(_)) => Ok(v.clone()),
        Some(v) => Err(format!("{at}.{key}: must be a number, got {v}")),
    }
}

/// Validates one parameter table and returns its stored form (all fields, fixed order).
pub fn normalize_param(raw: &Value, at: &str) -> Result<Value, String> {
    let Value::Object(p) = raw else {
        return Err(format!("{at}: must be a table"));
    };
    let name = match p.get("name") {
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(format!("{at}.name: must be a string")),
        None => return Err(format!("{at}.name: Field required")),
    };
    let displayed = match p.get("displayed_name") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(format!("{at}.displayed_name: must be a string")),
    };
    let displayed = if displayed.is_empty() {
        derive_displayed_name(&name)
    } else {
        displayed
    };
    let description = match p.get("description") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(format!("{at}.description: must be a string")),
    };
    let at_cfg = format!("{at}.config");
    let cfg = match p.get("config") {
        Some(Value::Object(c)) => c,
        Some(_) => return Err(format!("{at_cfg}: must be a table")),
        None => return Err(format!("{at_cfg}: Field required")),
    };
    let ty = match cfg.get("type") {
        Some(Value::String(t)) if PARAM_TYPES.contains(&t.as_str()) => t.clone(),
        Some(t) => {
            return Err(format!(
                "{at_cfg}.type: must be one of {}, got {t}",
                PARAM_TYPES.join(", ")
            ))
        }
        None => return Err(format!("{at_cfg}.type: Field required")),
    };
    let base = base_of(&ty);
    let adjustable = match cfg.get("adjustable") {
        None | Some(Value::Null) => false,
        Some(v) => {
            lax_bool(v).ok_or_else(|| format!("{at_cfg}.adjustable: must be a boolean, got {v}"))?
        }
    };
    let options: Vec<Value> = match cfg.get("options") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|o| match o {
                Value::Bool(b) => Ok(json!(i64::from(*b))),
                Value::Object(_) => Err(format!("{at_cfg}.options: tables are not allowed")),
                other => Ok(other.clone()),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(format!("{at_cfg}.options: must be a list")),
    };
    let mut default = match cfg.get("default") {
        None | Some(Value::Null) => Value::Null,
        Some(Value::Array(items)) => coerce_default_array(items, &format!("{at_cfg}.default"))?,
        Some(Value::Object(_)) => return Err(format!("{at_cfg}.default: tables are not allowed")),
        Some(v) => v.clone(),
    };
    let min = numeric_or_null(cfg, "min", &at_cfg)?;
    let max = numeric_or_null(cfg, "max", &at_cfg)?;
    let step = numeric_or_null(cfg, "step", &at_cfg)?;
    let decimal_precision = match cfg.get("decimal_precision") {
        None | Some(Value::Null) => Value::Null,
        Some(v) if v.is_i64() || v.is_u64() => v.clone(),
        Some(v) => {
            return Err(format!(
                "{at_cfg}.decimal_precision: must be an integer, got {v}"
            ))
        }
    };

    if !decimal_precision.is_null() {
        if decimal_precision.as_i64().unwrap_or(-1) < 0 {
            return Err(format!(
                "{at_cfg}.decimal_precision: must be greater than or equal to 0"
            ));
        }
        if base != Base::Float && ty != "float_list" {
            return Err(format!(
                "{at_cfg}.decimal_precision: only allowed for float types, not {ty}"
            ));
        }
    }
    if !default.is_null() && !is_base(base, &default) {
        return Err(format!(
            "{at_cfg}.default: a {ty} parameter needs a default of type {}, got {default}",
            base_name(base)
        ));
    }
    if ty.ends_with("_range") {
        for (key, v) in [("min", &min), ("max", &max), ("step", &step)] {
            if v.is_null() {
                return Err(format!("{at_cfg}.{key}: required for {ty}"));
            }
            if !is_base(base, v) {
                return Err(format!(
                    "{at_cfg}.{key}: must be of type {} for {ty}, got {v}",
                    base_name(base)
                ));
            }
        }
        if min.as_f64() >= max.as_f64() {
            return Err(format!("{at_cfg}: min must be less than max"));
        }
    }
    if ty.ends_with("_enum") {
        if options.is_empty() {
            return Err(format!("{at_cfg}.options: {ty} needs at least one option"));
        }
        if let Some(bad) = options.iter().find(|o| !is_base(base, o)) {
            return Err(format!(
                "{at_cfg}.options: every option of {ty} must be of type {}, got {bad}",
                base_name(base)
            ));
        }
        if default.is_null() {
            default = options[0].clone();
        } else if !options.iter().any(|o| py_eq(o, &default)) {
            return Err(format!(
                "{at_cfg}.default: {default} is not one of the options"
            ));
        }
    }
    if ty.ends_with("_list") && options.iter().any(|o| !o.is_array()) {
        return Err(format!(
            "{at_cfg}.options: every option of {ty} must itself be a list"
        ));
    }

    Ok(json!({
        "name": name,
        "displayed_name": displayed,
        "description": description,
        "config": {
            "type": ty,
            "default": default,
            "adjustable": adjustable,
            "options": options,
            "min": min,
            "max": max,
            "step": step,
            "decimal_precision": decimal_precision,
        }
    }))
}

/// Validates a whole list; `key` names it in errors (e.g. `[tool.compox].additional_parameters`).
pub fn normalize_list(raw: Option<&Value>, key: &str) -> Result<Vec<Value>, String> {
    match raw {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, p)| normalize_param(p, &format!("{key}[{i}]")))
            .collect(),
        Some(_) => Err(format!("{key}: must be a list of parameter tables")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(c: Value) -> Result<Value, String> {
        normalize_param(&json!({"name": "my_param", "config": c}), "p")
    }

    #[test]
    fn displayed_name_derivation() {
        assert_eq!(
            derive_displayed_name("denoising_weight"),
            "Denoising weight"
        );
        assert_eq!(derive_displayed_name("__a__b  c"), "A b c");
        assert_eq!(derive_displayed_name("___"), "___");
    }

    #[test]
    fn float_needs_float_default() {
        assert!(cfg(json!({"type": "float", "default": 1})).is_err());
        let ok = cfg(json!({"type": "float", "default": 1.0})).unwrap();
        assert_eq!(
            serde_json::to_string(&ok["config"]["default"]).unwrap(),
            "1.0"
        );
        assert!(cfg(json!({"type": "int", "default": true})).is_ok());
    }

    #[test]
    fn ranges_need_typed_bounds() {
        assert!(cfg(json!({"type": "float_range", "min": 0, "max": 1.0, "step": 0.1})).is_err());
        assert!(cfg(json!({"type": "float_range", "min": 1.0, "max": 0.0, "step": 0.1})).is_err());
        assert!(
            cfg(json!({"type": "int_range", "min": 0, "max": 10, "step": 1, "default": 3})).is_ok()
        );
        assert!(cfg(json!({"type": "int_range", "min": 0, "max": 10})).is_err());
    }

    #[test]
    fn enum_default_defaults_to_first_option() {
        let v = cfg(json!({"type": "string_enum", "options": ["a", "b"]})).unwrap();
        assert_eq!(v["config"]["default"], "a");
        assert!(cfg(json!({"type": "string_enum", "options": ["a"], "default": "z"})).is_err());
        assert!(cfg(json!({"type": "int_enum", "options": []})).is_err());
        let v = cfg(json!({"type": "int_enum", "options": [true, false]})).unwrap();
        assert_eq!(v["config"]["options"], json!([1, 0]));
    }

    #[test]
    fn lists_need_list_options_and_coerce_defaults() {
        assert!(cfg(json!({"type": "bool_list", "options": [true, false]})).is_err());
        assert!(cfg(json!({"type": "bool_list", "options": [[true], [false]]})).is_ok());
        let v = cfg(json!({"type": "float_list", "default": [1, 2.5]})).unwrap();
        assert_eq!(
            serde_json::to_string(&v["config"]["default"]).unwrap(),
            "[1.0,2.5]"
        );
        assert!(cfg(json!({"type": "string_list", "default": ["a", 1]})).is_err());
    }

    #[test]
    fn decimal_precision_only_for_floats() {
        assert!(cfg(json!({"type": "int", "decimal_precision": 2})).is_err());
        assert!(cfg(json!({"type": "float", "decimal_precision": -1})).is_err());
        assert!(cfg(json!({"type": "float_range", "min": 0.0, "max": 1.0, "step": 0.1, "decimal_precision": 2})).is_ok());
    }

    #[test]
    fn legacy_flat_form_is_rejected() {
        let err =
            normalize_param(&json!({"name": "x", "type": "int", "default": 1}), "p").unwrap_err();
        assert!(err.contains("config: Field required"), "{err}");
    }
}
