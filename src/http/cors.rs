//! CORS with the behaviour of Starlette's middleware configured from `middleware.*`
//! (`rest-api.md` §3): preflights answered here, never routed; actual requests get the headers.

use crate::config::MiddlewareSettings;
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::HttpResponse;

const SAFE_HEADERS: [&str; 4] = [
    "Accept",
    "Accept-Language",
    "Content-Language",
    "Content-Type",
];
const ALL_METHODS: &str = "DELETE, GET, HEAD, OPTIONS, PATCH, POST, PUT";

#[derive(Clone)]
pub struct Cors {
    s: MiddlewareSettings,
}

impl Cors {
    pub fn new(s: MiddlewareSettings) -> Self {
        Cors { s }
    }

    fn any_origin(&self) -> bool {
        self.s.allow_origins.iter().any(|o| o == "*")
    }

    fn origin_allowed(&self, origin: &str) -> bool {
        self.any_origin() || self.s.allow_origins.iter().any(|o| o == origin)
    }

    fn methods(&self) -> String {
        if self.s.allow_methods.iter().any(|m| m == "*") {
            ALL_METHODS.to_string()
        } else {
            self.s.allow_methods.join(", ")
        }
    }

    /// The answer to a preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`).
    pub fn preflight(
        &self,
        origin: &str,
        method: &str,
        requested_headers: Option<&str>,
    ) -> HttpResponse {
        let mut failures = Vec::new();
        if !self.origin_allowed(origin) {
            failures.push("origin");
        }
        let methods_any = self.s.allow_methods.iter().any(|m| m == "*");
        if !methods_any
            && !self
                .s
                .allow_methods
                .iter()
                .any(|m| m.eq_ignore_ascii_case(method))
        {
            failures.push("method");
        }
        let headers_any = self.s.allow_headers.iter().any(|h| h == "*");
        let mut allowed: Vec<String> = SAFE_HEADERS.iter().map(|s| s.to_string()).collect();
        allowed.extend(self.s.allow_headers.iter().filter(|h| *h != "*").cloned());
        allowed.sort();
        allowed.dedup();
        if let Some(req) = requested_headers {
            if !headers_any {
                let lower: Vec<String> = allowed.iter().map(|h| h.to_ascii_lowercase()).collect();
                let bad = req
                    .split(',')
                    .map(|h| h.trim().to_ascii_lowercase())
                    .filter(|h| !h.is_empty())
                    .any(|h| !lower.contains(&h));
                if bad {
                    failures.push("headers");
                }
            }
        }
        let mut resp = if failures.is_empty() {
            HttpResponse::Ok()
                .content_type("text/plain; charset=utf-8")
                .body("OK")
        } else {
            HttpResponse::BadRequest()
                .content_type("text/plain; charset=utf-8")
                .body(format!("Disallowed CORS {}", failures.join(", ")))
        };
        let h = resp.headers_mut();
        set(h, "access-control-allow-methods", &self.methods());
        set(h, "access-control-max-age", &self.s.max_age.to_string());
        let allow_headers = match (headers_any, requested_headers) {
            (true, Some(req)) => req.to_string(),
            _ => allowed.join(", "),
        };
        set(h, "access-control-allow-headers", &allow_headers);
        if self.any_origin() && !self.s.allow_credentials {
            set(h, "access-control-allow-origin", "*");
        } else {
            set(h, "vary", "Origin");
            if self.origin_allowed(origin) {
                set(h, "access-control-allow-origin", origin);
            }
        }
        if self.s.allow_credentials {
            set(h, "access-control-allow-credentials", "true");
        }
        resp
    }

    /// Responses depend on `Origin` unless every origin gets the same answer (the original sends
    /// `Vary: Origin` on every response).
    pub fn vary(&self, headers: &mut actix_web::http::header::HeaderMap) {
        if !self.any_origin() || self.s.allow_credentials {
            append_vary(headers);
        }
    }

    /// Adds headers to the response of an actual request that carried `Origin`.
    pub fn decorate(
        &self,
        origin: &str,
        has_cookie: bool,
        headers: &mut actix_web::http::header::HeaderMap,
    ) {
        if self.any_origin() && !has_cookie && !self.s.allow_credentials {
            set(headers, "access-control-allow-origin", "*");
        } else if self.origin_allowed(origin) {
            set(headers, "access-control-allow-origin", origin);
            append_vary(headers);
        } else {
            append_vary(headers);
            return;
        }
        if self.s.allow_credentials {
            set(headers, "access-control-allow-credentials", "true");
        }
        if !self.s.expose_headers.is_empty() {
            set(
                headers,
                "access-control-expose-headers",
                &self.s.expose_headers.join(", "),
            );
        }
    }
}

fn set(h: &mut actix_web::http::header::HeaderMap, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        h.insert(HeaderName::from_static(name), v);
    }
}

fn append_vary(h: &mut actix_web::http::header::HeaderMap) {
    set(h, "vary", "Origin");
}
