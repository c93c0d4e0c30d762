//! Dynamic path prefixes of `platform.md` §2.7 (`LOG_DEFAULT:`, `PROGRAMDATA_DEFAULT:`,
//! `RELATIVE_DEFAULT:`), POSIX flavour.

use super::InfoSettings;

/// Expands a leading prefix once; other values pass through unchanged.
///
/// Deliberate difference from the original: the rest is taken whole rather than cut at a second
/// occurrence of the prefix text (the spec recommends this).
pub fn expand_prefix(value: &str, info: &InfoSettings) -> String {
    let prefixes: [(&str, String); 3] = [
        (
            "LOG_DEFAULT:",
            format!("var/log/{}/{}", info.organization_name, info.product_name),
        ),
        ("PROGRAMDATA_DEFAULT:", ".".to_string()),
        ("RELATIVE_DEFAULT:", ".".to_string()),
    ];
    for (prefix, dir) in prefixes {
        if let Some(rest) = value.strip_prefix(prefix) {
            let rest = normpath(rest);
            if rest.starts_with('/') {
                return rest;
            }
            return join(&dir, &rest);
        }
    }
    value.to_string()
}

fn join(dir: &str, rest: &str) -> String {
    if dir == "." {
        // Python's os.path.join(".", "x") keeps the dot.
        return format!("./{rest}");
    }
    format!("{dir}/{rest}")
}

/// `os.path.normpath` for POSIX paths: collapses `.`, `..` and repeated separators.
pub fn normpath(path: &str) -> String {
    if path.is_empty() {
        return ".".into();
    }
    let absolute = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for comp in path.split('/') {
        match comp {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|p| *p != "..") {
                    parts.pop();
                } else if !absolute {
                    parts.push("..");
                }
            }
            other => parts.push(other),
        }
    }
    let joined = parts.join("/");
    match (absolute, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".into(),
        (false, false) => joined,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> InfoSettings {
        InfoSettings::default()
    }

    #[test]
    fn log_default_is_relative_var_log() {
        assert_eq!(
            expand_prefix("LOG_DEFAULT:compox.log", &info()),
            "var/log/TESCAN GROUP, a.s./Tescan Compox Backend/compox.log"
        );
    }

    #[test]
    fn absolute_rest_replaces_prefix_dir() {
        assert_eq!(
            expand_prefix("LOG_DEFAULT:/abs/x.log", &info()),
            "/abs/x.log"
        );
    }

    #[test]
    fn dotdot_is_collapsed_and_empty_rest_is_dot() {
        assert_eq!(expand_prefix("PROGRAMDATA_DEFAULT:a/../b", &info()), "./b");
        assert_eq!(
            expand_prefix("LOG_DEFAULT:", &info()),
            "var/log/TESCAN GROUP, a.s./Tescan Compox Backend/."
        );
    }

    #[test]
    fn prefix_only_recognised_at_start() {
        assert_eq!(expand_prefix("x/LOG_DEFAULT:y", &info()), "x/LOG_DEFAULT:y");
    }
}
