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
/// What a preflight answer depends on (the original's Starlette sends this on every preflight).
const PREFLIGHT_VARY: &str = concat!(
    "Origin, Access-Control-Request-Method, Access-Control-Request-Headers, ",
    "Access-Control-Request-Private-Network"
);

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
    /// Private network access cannot be enabled in the settings, so a preflight asking for it
    /// (`Access-Control-Request-Private-Network`) always fails with `private-network`.
    pub fn preflight(
        &self,
        origin: &str,
        method: &str,
        requested_headers: Option<&str>,
        private_network: bool,
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
        if private_network {
            failures.push("private-network");
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
        match (headers_any, requested_headers) {
            (true, Some(req)) => set(h, "access-control-allow-headers", req),
            (true, None) => {}
            (false, _) => set(h, "access-control-allow-headers", &allowed.join(", ")),
        }
        set(h, "vary", PREFLIGHT_VARY);
        if self.any_origin() && !self.s.allow_credentials {
            set(h, "access-control-allow-origin", "*");
        } else if self.origin_allowed(origin) {
            set(h, "access-control-allow-origin", origin);
        }
        if self.s.allow_credentials {
            set(h, "access-control-allow-credentials", "true");
        }
        resp
    }

    /// Every response to an actual request depends on `Origin` (the original sends `Vary: Origin`
    /// on all of them).
    pub fn vary(&self, headers: &mut actix_web::http::header::HeaderMap) {
        append_vary(headers);
    }

    /// Adds headers to the response of an actual request that carried `Origin`. The exposed
    /// headers and the credentials flag go out whatever the origin (as the original does); only
    /// `Access-Control-Allow-Origin` depends on it.
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
        }
        append_vary(headers);
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
