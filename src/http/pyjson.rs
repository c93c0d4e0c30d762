//! Where and why Python's `json` module rejects a text: the position (in characters) and message
//! the original puts into a `json_invalid` error's `loc` and `ctx.error` (`rest-api.md` §1.3).
//!
//! serde_json decides whether a body is valid; this scanner only runs on bodies serde rejected, to
//! describe the failure the way CPython 3.11's decoder does (it reports the start of the token it
//! could not read, where serde reports the character after it).

const WHITESPACE: [char; 4] = [' ', '\t', '\n', '\r'];

/// A decoding failure: character offset and CPython's message.
type Failure = (usize, &'static str);

/// Deepest nesting of arrays and objects a body may have: serde_json's own limit, so whatever
/// serde parses, the scanner below (which recurses once per level) may describe safely.
pub const MAX_DEPTH: usize = 128;
/// The message for a body nested deeper than [`MAX_DEPTH`] (Python's limit is its recursion
/// limit, about 1000 levels, so this is ours, not CPython's).
pub const TOO_DEEP: &str = "Nesting deeper than 128 arrays or objects is not supported";

/// The character offset of the first `[` or `{` that opens level [`MAX_DEPTH`] + 1, if any.
/// Iterative, so it is safe on any input; brackets inside strings do not count.
pub fn too_deep(text: &str) -> Option<usize> {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for (offset, c) in text.chars().enumerate() {
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_string = true,
            '[' | '{' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Some(offset);
                }
            }
            ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    None
}

/// The failure Python would report for `text`, or `None` when Python would accept it (for example
/// `NaN`, or integers and floats beyond what serde reads).
pub fn python_json_error(text: &str) -> Option<Failure> {
    if let Some(at) = too_deep(text) {
        return Some((at, TOO_DEEP));
    }
    let s: Vec<char> = text.chars().collect();
    Scanner { s: &s }.document().err()
}

/// Recursive descent; [`python_json_error`] only lets it see texts at most [`MAX_DEPTH`] deep.
struct Scanner<'a> {
    s: &'a [char],
}

/// Scanning a value either ends at an index, finds no value at an index, or fails outright.
enum ValueError {
    NoValue(usize),
    Failed(Failure),
}

impl From<Failure> for ValueError {
    fn from(f: Failure) -> Self {
        ValueError::Failed(f)
    }
}

impl Scanner<'_> {
    fn at(&self, i: usize) -> Option<char> {
        self.s.get(i).copied()
    }

    fn skip_ws(&self, mut i: usize) -> usize {
        while self.at(i).is_some_and(|c| WHITESPACE.contains(&c)) {
            i += 1;
        }
        i
    }

    fn document(&self) -> Result<(), Failure> {
        let start = self.skip_ws(0);
        let end = self.value(start).map_err(|e| match e {
            ValueError::NoValue(i) => (i, "Expecting value"),
            ValueError::Failed(f) => f,
        })?;
        let end = self.skip_ws(end);
        if end != self.s.len() {
            return Err((end, "Extra data"));
        }
        Ok(())
    }

    fn starts_with(&self, i: usize, word: &str) -> bool {
        word.chars()
            .enumerate()
            .all(|(k, c)| self.at(i + k) == Some(c))
    }

    fn value(&self, i: usize) -> Result<usize, ValueError> {
        match self.at(i) {
            None => Err(ValueError::NoValue(i)),
            Some('"') => Ok(self.string(i + 1)?),
            Some('{') => self.object(i + 1),
            Some('[') => self.array(i + 1),
            _ => {
                for word in ["null", "true", "false", "NaN", "Infinity", "-Infinity"] {
                    if self.starts_with(i, word) {
                        return Ok(i + word.chars().count());
                    }
                }
                self.number(i).ok_or(ValueError::NoValue(i))
            }
        }
    }

    /// `-?(0|[1-9]\d*)(\.\d+)?([eE][-+]?\d+)?`, the longest match at `i`.
    fn number(&self, i: usize) -> Option<usize> {
        let digits = |mut j: usize| {
            let from = j;
            while self.at(j).is_some_and(|c| c.is_ascii_digit()) {
                j += 1;
            }
            (j > from).then_some(j)
        };
        let mut j = if self.at(i) == Some('-') { i + 1 } else { i };
        j = match self.at(j) {
            Some('0') => j + 1,
            Some('1'..='9') => digits(j)?,
            _ => return None,
        };
        if self.at(j) == Some('.') {
            if let Some(k) = digits(j + 1) {
                j = k;
            }
        }
        if matches!(self.at(j), Some('e' | 'E')) {
            let sign = usize::from(matches!(self.at(j + 1), Some('+' | '-')));
            if let Some(k) = digits(j + 1 + sign) {
                j = k;
            }
        }
        Some(j)
    }

    /// A string whose opening quote is at `i - 1`; returns the index after the closing quote.
    fn string(&self, mut i: usize) -> Result<usize, Failure> {
        let begin = i - 1;
        loop {
            let Some(c) = self.at(i) else {
                return Err((begin, "Unterminated string starting at"));
            };
            match c {
                '"' => return Ok(i + 1),
                '\\' => match self.at(i + 1) {
                    None => return Err((begin, "Unterminated string starting at")),
                    Some('u') => {
                        let hex = i + 2;
                        if hex + 4 >= self.s.len()
                            || !(hex..hex + 4).all(|k| self.s[k].is_ascii_hexdigit())
                        {
                            return Err((i + 1, "Invalid \\uXXXX escape"));
                        }
                        i = hex + 4;
                    }
                    Some('"' | '\\' | '/' | 'b' | 'f' | 'n' | 'r' | 't') => i += 2,
                    Some(_) => return Err((i, "Invalid \\escape")),
                },
                c if (c as u32) < 0x20 => return Err((i, "Invalid control character at")),
                _ => i += 1,
            }
        }
    }

    /// An object whose `{` is at `i - 1`.
    fn object(&self, i: usize) -> Result<usize, ValueError> {
        const NAME: &str = "Expecting property name enclosed in double quotes";
        let mut end = self.skip_ws(i);
        match self.at(end) {
            Some('}') => return Ok(end + 1),
            Some('"') => {}
            _ => return Err((end, NAME).into()),
        }
        loop {
            end = self.string(end + 1)?;
            end = self.skip_ws(end);
            if self.at(end) != Some(':') {
                return Err((end, "Expecting ':' delimiter").into());
            }
            end = match self.member(self.skip_ws(end + 1), '}')? {
                Next::Closed(e) => return Ok(e),
                Next::Member(e) => e,
            };
            if self.at(end) != Some('"') {
                return Err((end, NAME).into());
            }
        }
    }

    /// An array whose `[` is at `i - 1`.
    fn array(&self, i: usize) -> Result<usize, ValueError> {
        let mut end = self.skip_ws(i);
        if self.at(end) == Some(']') {
            return Ok(end + 1);
        }
        loop {
            end = match self.member(end, ']')? {
                Next::Closed(e) => return Ok(e),
                Next::Member(e) => e,
            };
        }
    }

    /// The value at `i` of an object or array that `close` ends, and the delimiter after it.
    fn member(&self, i: usize, close: char) -> Result<Next, ValueError> {
        let end = match self.value(i) {
            Ok(e) => e,
            Err(ValueError::NoValue(at)) => return Err((at, "Expecting value").into()),
            Err(failed) => return Err(failed),
        };
        let end = self.skip_ws(end);
        match self.at(end) {
            Some(c) if c == close => Ok(Next::Closed(end + 1)),
            Some(',') => Ok(Next::Member(self.skip_ws(end + 1))),
            _ => Err((end, "Expecting ',' delimiter").into()),
        }
    }
}

/// What follows a member of an object or array.
enum Next {
    /// The closing bracket; the container ends before this index.
    Closed(usize),
    /// A `,`; the next member starts at this index.
    Member(usize),
}

#[cfg(test)]
mod tests {
    use super::python_json_error as err;
    use super::{too_deep, MAX_DEPTH, TOO_DEEP};

    #[test]
    fn nesting_is_bounded_without_recursion() {
        let deep = "[".repeat(100_000);
        assert_eq!(too_deep(&deep), Some(MAX_DEPTH));
        assert_eq!(err(&deep), Some((MAX_DEPTH, TOO_DEEP)));
        let ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert_eq!(too_deep(&ok), None);
        assert_eq!(err(&ok), None);
        // Brackets inside strings, escaped quotes included, are text.
        let text = format!("{{\"a\": \"\\\"{}\"}}", "[".repeat(500));
        assert_eq!(too_deep(&text), None, "{text}");
        let mixed = format!("{{\"a\": {}", "{\"b\": ".repeat(200));
        assert_eq!(too_deep(&mixed), Some(6 + 6 * (MAX_DEPTH - 1)));
    }

    /// Each case with the answer of CPython 3.11's `json.loads`.
    #[test]
    fn failures_match_cpython() {
        let cases: &[(&str, usize, &str)] = &[
            (r#"{"a" 1}"#, 5, "Expecting ':' delimiter"),
            (r#"{"a": 1 "b": 2}"#, 8, "Expecting ',' delimiter"),
            (
                r#"{"a": 1,}"#,
                8,
                "Expecting property name enclosed in double quotes",
            ),
            ("[1,]", 3, "Expecting value"),
            (r#"{"a": "x"#, 6, "Unterminated string starting at"),
            (r#""abc"#, 0, "Unterminated string starting at"),
            ("{\"a\": \"\u{1}\"}", 7, "Invalid control character at"),
            (r#"{"a": "\q"}"#, 7, "Invalid \\escape"),
            (r#"{"a": "\u12"}"#, 8, "Invalid \\uXXXX escape"),
            ("{} x", 3, "Extra data"),
            ("nul", 0, "Expecting value"),
            (
                "{'a': 1}",
                1,
                "Expecting property name enclosed in double quotes",
            ),
            ("{", 1, "Expecting property name enclosed in double quotes"),
            (r#"{"a":"#, 5, "Expecting value"),
            (r#"{"a""#, 4, "Expecting ':' delimiter"),
            (r#"{"a": 1"#, 7, "Expecting ',' delimiter"),
            ("[1", 2, "Expecting ',' delimiter"),
            ("-", 0, "Expecting value"),
            ("1.", 1, "Extra data"),
            ("01", 1, "Extra data"),
            (r#"{"a": tru}"#, 6, "Expecting value"),
            (" \n {\n  \"a\": ,\n}", 12, "Expecting value"),
            (r#"{"algorithm_id": "#, 17, "Expecting value"),
            ("[1 2]", 3, "Expecting ',' delimiter"),
            (r#"{"a":1}}"#, 7, "Extra data"),
            (r#"{"a":1]"#, 6, "Expecting ',' delimiter"),
            ("", 0, "Expecting value"),
            (r#"{"é": x}"#, 6, "Expecting value"),
        ];
        for (text, pos, msg) in cases {
            assert_eq!(err(text), Some((*pos, *msg)), "{text:?}");
        }
    }

    #[test]
    fn python_accepts_what_serde_may_not() {
        for text in [
            r#"{"a": NaN}"#,
            "[Infinity, -Infinity]",
            "1e400",
            r#"{"a": "\ud800"}"#,
        ] {
            assert_eq!(err(text), None, "{text:?}");
        }
    }
}
