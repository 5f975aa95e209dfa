//! The request guard: refuses, before the key check and before any route
//! runs, the requests a web page could forge against a daemon it can reach.
//!
//! A daemon on loopback is reachable by every page the user opens. Browsers
//! send "simple" cross-origin POSTs (`text/plain`, form bodies) without a
//! preflight, and DNS rebinding makes a foreign page same-origin under a
//! name the attacker controls. So every request, on every route (`/v1`,
//! `/mcp`, `/metrics`, health, OpenAPI, the fallback), passes three checks:
//!
//! - **Host** (400 `bad_request` when malformed or missing on HTTP/1.1,
//!   421 `misdirected_host` otherwise): an IP literal that is the listen
//!   address (any IP literal when listening on `0.0.0.0` or `::`), a loopback
//!   IP literal, `localhost`, or a `server.allowed_hosts` entry; the port is
//!   not compared. A rebinding page's `Host` is its own name, which none of
//!   these admit. HTTP/1.0 requests without a `Host` pass: no browser sends
//!   one.
//! - **Origin** (403 `forbidden_origin`): a request that carries `Origin`
//!   (the literal `null` included) passes only when it is one of
//!   `server.allowed_origins` (none by default). Browsers send `Origin` on
//!   every cross-origin request but simple GETs, whose answers the page
//!   cannot read; a daemon serves no pages of its own, so no origin is its
//!   own.
//! - **Content-Type** (415 `unsupported_media_type`): every POST, PUT and
//!   PATCH, body or not, needs `application/json`, except the file upload
//!   (`PUT /v1/sandboxes/{id}/files/content`), which needs
//!   `application/octet-stream`. Neither is a type a page may send without
//!   a preflight, and the preflight fails unless the origin is allowed.
//!
//! CORS is off unless origins are configured: then preflights from them are
//! answered here and their responses carry `Access-Control-Allow-Origin`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Version};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::{ApiError, ErrorKind};
use petty_config::ServerSection;

/// A host as a `Host` header or a `server.allowed_hosts` entry names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostName {
    /// An IP literal (IPv4-mapped IPv6 addresses as IPv4).
    Ip(IpAddr),
    /// A DNS name, lower case, without a trailing dot.
    Name(String),
}

/// Parses a `Host` header value (`host[:port]`, IPv6 in brackets); the port
/// is checked for form and dropped. `None` when it is not a host.
pub fn parse_host(value: &str) -> Option<HostName> {
    let (host, rest) = match value.strip_prefix('[') {
        Some(inner) => {
            let (v6, rest) = inner.split_once(']')?;
            (HostPart::V6(v6), rest)
        }
        None => match value.find(':') {
            Some(i) => (HostPart::Other(&value[..i]), &value[i..]),
            None => (HostPart::Other(value), ""),
        },
    };
    if !rest.is_empty() {
        let port = rest.strip_prefix(':')?;
        if port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
    }
    host.parse()
}

enum HostPart<'a> {
    V6(&'a str),
    Other(&'a str),
}

impl HostPart<'_> {
    fn parse(self) -> Option<HostName> {
        match self {
            Self::V6(s) => s
                .parse::<Ipv6Addr>()
                .ok()
                .map(|ip| HostName::Ip(IpAddr::V6(ip).to_canonical())),
            Self::Other(s) => {
                if let Ok(ip) = s.parse::<Ipv4Addr>() {
                    return Some(HostName::Ip(IpAddr::V4(ip)));
                }
                let name = s.strip_suffix('.').unwrap_or(s);
                let valid = !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
                valid.then(|| HostName::Name(name.to_ascii_lowercase()))
            }
        }
    }
}

/// Parses a `server.allowed_hosts` entry: a DNS name or an IP literal,
/// without a port. The error says what is wrong with it.
pub fn parse_allowed_host(entry: &str) -> Result<HostName, &'static str> {
    let entry = entry.trim();
    if entry.is_empty() {
        return Err("is empty");
    }
    if entry.contains('*') {
        return Err(
            "is a wildcard; list each host name (a wildcard would let DNS rebinding back in)",
        );
    }
    if entry.contains('/') {
        return Err("is a URL; give the host name alone, such as petty.internal");
    }
    if let Ok(ip) = entry.parse::<Ipv6Addr>() {
        return Ok(HostName::Ip(IpAddr::V6(ip).to_canonical()));
    }
    let bracketed = entry.starts_with('[') && entry.ends_with(']');
    if entry.contains(':') && !bracketed {
        return Err("has a port; give the host alone (ports are not compared)");
    }
    parse_host(entry).ok_or("is not a host name or an IP address")
}

/// Normalises an origin, `scheme://host[:port]`: scheme and host in lower
/// case, IP literals in their canonical form, the scheme's default port
/// dropped. Used for `Origin` headers and `server.allowed_origins` entries
/// alike, so the two compare as strings. The error says what is wrong.
pub fn parse_origin(value: &str) -> Result<String, &'static str> {
    if value.eq_ignore_ascii_case("null") {
        return Err(
            "is `null`, which sandboxed frames and local files send whatever site they come from",
        );
    }
    if value.contains('*') {
        return Err("is a wildcard; list each origin");
    }
    let (scheme, rest) = value.split_once("://").ok_or(
        "has no scheme; write it as scheme://host[:port], such as https://app.example.com",
    )?;
    let scheme_ok = scheme
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic())
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
    if !scheme_ok {
        return Err("has a malformed scheme");
    }
    let scheme = scheme.to_ascii_lowercase();
    if rest.contains(['/', '?', '#']) {
        return Err(
            "has a path; an origin is scheme://host[:port] with nothing after it, not even /",
        );
    }
    if rest.contains('@') {
        return Err("has user info; an origin is scheme://host[:port]");
    }
    let (host, port) = match rest.strip_prefix('[') {
        Some(inner) => {
            let (v6, after) = inner.split_once(']').ok_or("has an unclosed [")?;
            let ip: Ipv6Addr = v6.parse().map_err(|_| "has a malformed IPv6 address")?;
            (format!("[{ip}]"), after)
        }
        None => {
            let (h, after) = match rest.find(':') {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, ""),
            };
            let host = match HostPart::Other(h).parse() {
                Some(HostName::Ip(ip)) => ip.to_string(),
                // Trailing dots make a different origin in browsers: keep them.
                Some(HostName::Name(_)) => h.to_ascii_lowercase(),
                None => return Err("has no host, or a malformed one"),
            };
            (host, after)
        }
    };
    let port = match port {
        "" => None,
        p => {
            let digits = p.strip_prefix(':').ok_or("has junk after the host")?;
            Some(
                digits
                    .parse::<u16>()
                    .ok()
                    .filter(|_| digits.bytes().all(|b| b.is_ascii_digit()))
                    .ok_or("has a malformed port")?,
            )
        }
    };
    let default = match scheme.as_str() {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    };
    Ok(match port.filter(|p| Some(*p) != default) {
        Some(p) => format!("{scheme}://{host}:{p}"),
        None => format!("{scheme}://{host}"),
    })
}

/// True when `headers` carry exactly one `Content-Type` whose media type
/// (parameters such as `; charset=utf-8` aside) is `want`, in any case.
pub fn content_type_is(headers: &HeaderMap, want: &str) -> bool {
    let mut values = headers.get_all(header::CONTENT_TYPE).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return false;
    };
    let Ok(value) = value.to_str() else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or_default().trim();
    essence.eq_ignore_ascii_case(want)
}

/// The media type a request must declare, if any: POST, PUT and PATCH need
/// one whether or not they have a body (a page's body-less `fetch` POST is
/// a simple request too).
pub fn required_content_type(method: &Method, path: &str) -> Option<&'static str> {
    if !matches!(*method, Method::POST | Method::PUT | Method::PATCH) {
        return None;
    }
    let parts = path.split('/').collect::<Vec<_>>();
    let put = *method == Method::PUT;
    Some(match parts.as_slice() {
        ["", "v1", "sandboxes", id, "files", "content"] if put && !id.is_empty() => {
            "application/octet-stream"
        }
        ["", "v1", "templates", id, "image"] if put && !id.is_empty() => crate::node::SPARSE_TYPE,
        _ => "application/json",
    })
}

/// Request headers a preflight may ask for: the key, the body's type, and
/// what MCP's streamable HTTP transport sends.
const ALLOW_HEADERS: &str = "authorization, content-type, mcp-session-id, mcp-protocol-version, \
     last-event-id, mcp-method, mcp-name";
const ALLOW_METHODS: &str = "GET, POST, PUT, DELETE";
const EXPOSE_HEADERS: &str = "mcp-session-id";

/// The rules, resolved once from the configuration.
#[derive(Debug, Clone)]
pub struct Guard {
    listen: IpAddr,
    hosts: Vec<HostName>,
    origins: Vec<String>,
    /// E2B's API: its routes' media types ([`e2b_content_types`]).
    e2b: bool,
    /// E2B's `e2b.domain`, if set: the hosts under it E2B's SDKs name
    /// ([`e2b_host_form`] and `api.<domain>`) are this server too.
    e2b_domain: Option<String>,
}

/// `(port, sandbox id)` of a host E2B's SDKs name a sandbox's port by,
/// `<port>-<sandboxID>.<domain>` (`name` without a port, lower case), when
/// it is under `domain`.
pub fn e2b_host_form<'a>(name: &'a str, domain: &str) -> Option<(&'a str, &'a str)> {
    let label = name.strip_suffix(domain)?.strip_suffix('.')?;
    let (port, id) = label.split_once('-')?;
    let ok = !port.is_empty()
        && port.len() <= 5
        && port.bytes().all(|b| b.is_ascii_digit())
        && !id.is_empty()
        && !id.contains('.');
    ok.then_some((port, id))
}

/// The media types a request to E2B's API may declare, if it must declare
/// one: uploads are multipart or raw bytes, Connect streams
/// `application/connect+json`, the rest JSON.
pub fn e2b_content_types(method: &Method, path: &str) -> Option<&'static [&'static str]> {
    if !matches!(*method, Method::POST | Method::PUT | Method::PATCH) {
        return None;
    }
    Some(match path {
        "/files" => &["multipart/form-data", "application/octet-stream"],
        "/process.Process/Start"
        | "/process.Process/Connect"
        | "/process.Process/StreamInput"
        | "/filesystem.Filesystem/WatchDir" => &["application/connect+json"],
        _ => &["application/json"],
    })
}

impl Guard {
    /// The guard of a daemon listening on `listen` with `server`'s
    /// `allowed_hosts` and `allowed_origins` (entries that do not parse are
    /// skipped; `Config::validate` refuses them first).
    pub fn new(server: &ServerSection, listen: IpAddr) -> Self {
        Self {
            listen: listen.to_canonical(),
            hosts: server
                .allowed_hosts
                .iter()
                .filter_map(|h| parse_allowed_host(h).ok())
                .collect(),
            origins: server
                .allowed_origins
                .iter()
                .filter_map(|o| parse_origin(o.trim()).ok())
                .collect(),
            e2b: false,
            e2b_domain: None,
        }
    }

    /// This guard for E2B's API: the same Host and Origin rules, its own
    /// media types; with `domain` (`e2b.domain`), the hosts E2B's SDKs name
    /// under it too.
    pub fn for_e2b(self, domain: Option<&str>) -> Self {
        Self {
            e2b: true,
            e2b_domain: domain
                .filter(|d| !d.is_empty())
                .map(|d| d.trim_end_matches('.').to_ascii_lowercase()),
            ..self
        }
    }

    /// Whether a request may name `host`.
    pub fn host_allowed(&self, host: &HostName) -> bool {
        match host {
            HostName::Ip(ip) => {
                ip.is_loopback()
                    || self.listen.is_unspecified()
                    || *ip == self.listen
                    || self.hosts.contains(host)
            }
            HostName::Name(name) => {
                name == "localhost"
                    || self.hosts.contains(host)
                    || self.e2b_domain.as_deref().is_some_and(|d| {
                        name.strip_prefix("api.") == Some(d) || e2b_host_form(name, d).is_some()
                    })
            }
        }
    }

    /// Whether a request may carry `Origin: value`.
    pub fn origin_allowed(&self, value: &str) -> bool {
        parse_origin(value).is_ok_and(|o| self.origins.contains(&o))
    }

    fn cors_enabled(&self) -> bool {
        !self.origins.is_empty()
    }

    /// What to do with a request: refuse it, answer its preflight, or let
    /// it through (with the origin to name in CORS headers, if any).
    fn check(&self, req: &Request) -> Result<Verdict, ApiError> {
        self.check_host(req)?;
        let headers = req.headers();
        let origin = match single(headers, header::ORIGIN) {
            Single::None => None,
            Single::One(v) if v.to_str().is_ok_and(|s| self.origin_allowed(s)) => Some(v.clone()),
            Single::One(v) => {
                return Err(forbidden_origin(&format!(
                    "Origin `{}` is",
                    shown(v.as_bytes())
                )))
            }
            Single::Many => return Err(forbidden_origin("more than one Origin header is")),
        };
        if let Some(origin) = &origin {
            if req.method() == Method::OPTIONS
                && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
            {
                return Ok(Verdict::Preflight(origin.clone()));
            }
        }
        let one;
        let wanted = if self.e2b {
            e2b_content_types(req.method(), req.uri().path())
        } else {
            one = required_content_type(req.method(), req.uri().path());
            one.as_ref().map(std::slice::from_ref)
        };
        if let Some(wanted) = wanted {
            if !wanted.iter().any(|want| content_type_is(headers, want)) {
                let want = wanted.join("` or `");
                let got = match headers.get(header::CONTENT_TYPE) {
                    Some(v) => format!("`{}`", shown(v.as_bytes())),
                    None => "none".to_string(),
                };
                let what = match want.as_str() {
                    "application/json" => "JSON, even with no body",
                    "application/octet-stream" => "the file's bytes as they are",
                    _ => "this media type",
                };
                let e = ApiError::new(
                    ErrorKind::UnsupportedMediaType,
                    format!(
                        "{} {} takes {what}: send `Content-Type: {want}` (got {got})",
                        req.method(),
                        req.uri().path()
                    ),
                );
                return Ok(Verdict::Refuse(e, origin));
            }
        }
        Ok(Verdict::Pass(origin))
    }

    fn check_host(&self, req: &Request) -> Result<(), ApiError> {
        let mut named = Vec::new();
        // An absolute-form request target names a host too; both must pass.
        if let Some(a) = req.uri().authority() {
            named.push(a.as_str().as_bytes());
        }
        match single(req.headers(), header::HOST) {
            Single::One(v) => named.push(v.as_bytes()),
            Single::Many => {
                return Err(ApiError::bad_request(
                    "more than one Host header; send one, naming this server",
                ))
            }
            Single::None if named.is_empty() && req.version() > Version::HTTP_10 => {
                return Err(ApiError::bad_request(
                    "no Host header; HTTP/1.1 needs one naming this server, such as `Host: 127.0.0.1:8080`",
                ))
            }
            Single::None => {}
        }
        for raw in named {
            let host = std::str::from_utf8(raw)
                .ok()
                .and_then(parse_host)
                .ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "Host `{}` is not a host name or address; name this server, such as `Host: 127.0.0.1:8080`",
                        shown(raw)
                    ))
                })?;
            if !self.host_allowed(&host) {
                return Err(ApiError::new(ErrorKind::MisdirectedHost,
                    format!(
                        "Host `{}` is not this server: name it by its listen address ({}), a loopback \
                         address or localhost, or add the host to server.allowed_hosts \
                         (a foreign name can be a DNS rebinding attack)",
                        shown(raw),
                        self.listen
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Adds the CORS headers of a response to `origin` (or, with CORS on,
    /// `Vary: Origin` alone to a request without one).
    fn decorate(&self, resp: &mut Response, origin: Option<HeaderValue>) {
        if !self.cors_enabled() {
            return;
        }
        let h = resp.headers_mut();
        h.append(header::VARY, HeaderValue::from_static("Origin"));
        if let Some(origin) = origin {
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
            h.insert(
                header::ACCESS_CONTROL_EXPOSE_HEADERS,
                HeaderValue::from_static(EXPOSE_HEADERS),
            );
        }
    }

    fn preflight(&self, req: &Request, origin: HeaderValue) -> Response {
        let mut resp = StatusCode::NO_CONTENT.into_response();
        let h = resp.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static(ALLOW_METHODS),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(ALLOW_HEADERS),
        );
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
        h.insert(
            header::VARY,
            HeaderValue::from_static(
                "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
            ),
        );
        // Chrome's Private Network Access: a public page calling a loopback
        // daemon asks for this; the operator allowed the origin, so say yes.
        if req
            .headers()
            .get("access-control-request-private-network")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"))
        {
            h.insert(
                "access-control-allow-private-network",
                HeaderValue::from_static("true"),
            );
        }
        resp
    }
}

enum Verdict {
    /// Answer the CORS preflight from this (allowed) origin.
    Preflight(HeaderValue),
    /// Refuse, with CORS headers for this (allowed) origin so its page can read why.
    Refuse(ApiError, Option<HeaderValue>),
    /// Let it through.
    Pass(Option<HeaderValue>),
}

enum Single<'a> {
    None,
    One(&'a HeaderValue),
    Many,
}

fn single(headers: &HeaderMap, name: header::HeaderName) -> Single<'_> {
    let mut values = headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (None, _) => Single::None,
        (Some(v), None) => Single::One(v),
        (Some(_), Some(_)) => Single::Many,
    }
}

/// A header value fit to quote in a message: lossy UTF-8, at most 100 characters.
fn shown(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw).chars().take(100).collect()
}

fn forbidden_origin(what: &str) -> ApiError {
    ApiError::new(
        ErrorKind::ForbiddenOrigin,
        format!(
            "{what} not allowed: requests from web pages are refused unless their origin is in \
             server.allowed_origins (empty by default); to let a page call this server, add its \
             origin there (scheme://host[:port]) or pass --allowed-origin"
        ),
    )
}

/// The middleware: runs [`Guard`]'s checks on every request before anything
/// else sees it (put it outside the key check).
pub async fn guard(guard: Arc<Guard>, req: Request, next: Next) -> Response {
    match guard.check(&req) {
        Ok(Verdict::Pass(origin)) => {
            let mut resp = next.run(req).await;
            guard.decorate(&mut resp, origin);
            resp
        }
        Ok(Verdict::Preflight(origin)) => guard.preflight(&req, origin),
        Ok(Verdict::Refuse(e, origin)) => {
            tracing::info!(method = %req.method(), path = req.uri().path(), kind = e.kind.as_str(), "request refused");
            let mut resp = e.into_response();
            guard.decorate(&mut resp, origin);
            resp
        }
        Err(e) => {
            tracing::warn!(method = %req.method(), path = req.uri().path(), kind = e.kind.as_str(), message = %e.message, "request refused");
            e.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> HostName {
        HostName::Ip(s.parse().unwrap())
    }

    fn name(s: &str) -> HostName {
        HostName::Name(s.into())
    }

    fn guard(listen: &str, hosts: &[&str], origins: &[&str]) -> Guard {
        let server = ServerSection {
            allowed_hosts: hosts.iter().map(|s| s.to_string()).collect(),
            allowed_origins: origins.iter().map(|s| s.to_string()).collect(),
            ..ServerSection::default()
        };
        Guard::new(
            &server,
            listen.parse::<std::net::SocketAddr>().unwrap().ip(),
        )
    }

    #[test]
    fn host_headers_parse_with_or_without_a_port() {
        assert_eq!(parse_host("127.0.0.1:8080"), Some(ip("127.0.0.1")));
        assert_eq!(parse_host("127.0.0.1"), Some(ip("127.0.0.1")));
        assert_eq!(parse_host("[::1]:8080"), Some(ip("::1")));
        assert_eq!(parse_host("[::1]"), Some(ip("::1")));
        assert_eq!(parse_host("[::ffff:127.0.0.1]:1"), Some(ip("127.0.0.1")));
        assert_eq!(parse_host("LocalHost:80"), Some(name("localhost")));
        assert_eq!(parse_host("localhost."), Some(name("localhost")));
        assert_eq!(parse_host("Petty.Internal:"), Some(name("petty.internal")));
        for bad in [
            "",
            ":80",
            "::1",
            "[::1",
            "[::1]x",
            "a b",
            "evil@127.0.0.1",
            "host:port",
            "host:123456",
            "[fe80::1%25eth0]",
            "h\u{e9}",
        ] {
            assert_eq!(parse_host(bad), None, "{bad:?}");
        }
        // Not a canonical IPv4 literal: a name, which no rule admits.
        assert_eq!(parse_host("0x7f.0.0.1"), Some(name("0x7f.0.0.1")));
    }

    #[test]
    fn hosts_allowed_are_the_listen_address_loopback_localhost_and_the_list() {
        let g = guard(
            "127.0.0.1:8080",
            &["Petty.Internal", "10.1.2.3", "[fd00::1]"],
            &[],
        );
        for ok in [
            "127.0.0.1:8080",
            "127.0.0.1:9999",
            "127.8.9.10",
            "[::1]:8080",
            "localhost:8080",
            "LOCALHOST",
            "petty.internal:443",
            "petty.internal.",
            "10.1.2.3:80",
            "[fd00:0::1]",
        ] {
            assert!(g.host_allowed(&parse_host(ok).unwrap()), "{ok}");
        }
        for no in [
            "evil.example",
            "evil.example:8080",
            "localhost.evil.example",
            "sub.petty.internal",
            "192.168.1.1",
            "[fd00::2]",
            "0x7f.0.0.1",
        ] {
            assert!(!g.host_allowed(&parse_host(no).unwrap()), "{no}");
        }
        // Listening on one address: that address.
        let g = guard("10.0.0.5:8080", &[], &[]);
        assert!(g.host_allowed(&ip("10.0.0.5")));
        assert!(!g.host_allowed(&ip("10.0.0.6")));
        assert!(!g.host_allowed(&name("petty.internal")));
        // Listening on every address: every IP literal is the listen address.
        for listen in ["0.0.0.0:8080", "[::]:8080"] {
            let g = guard(listen, &[], &[]);
            assert!(g.host_allowed(&ip("203.0.113.7")), "{listen}");
            assert!(g.host_allowed(&ip("2001:db8::7")), "{listen}");
            assert!(!g.host_allowed(&name("evil.example")), "{listen}");
        }
    }

    #[test]
    fn e2bs_host_forms_are_allowed_under_its_domain_only() {
        let g = guard("127.0.0.1:3000", &[], &[]).for_e2b(Some("sb.example.com"));
        for ok in [
            "49983-abc-123.sb.example.com:3000",
            "49999-abc.SB.example.com",
            "8080-abc.sb.example.com",
            "api.sb.example.com",
            "127.0.0.1:3000",
        ] {
            assert!(g.host_allowed(&parse_host(ok).unwrap()), "{ok}");
        }
        for no in [
            "49983-abc.evil.example",
            "49983-abc.sb.example.com.evil.example",
            "49983-abc.xsb.example.com",
            "49983-a.b.sb.example.com",
            "sb.example.com",
            "x-abc.sb.example.com",
            "123456-abc.sb.example.com",
            "49983-.sb.example.com",
            "api.evil.example",
        ] {
            assert!(!g.host_allowed(&parse_host(no).unwrap()), "{no}");
        }
        // No domain configured: no host form.
        let g = guard("127.0.0.1:3000", &[], &[]).for_e2b(None);
        assert!(!g.host_allowed(&name("49983-abc.sb.example.com")));
        assert_eq!(
            e2b_host_form("49999-ab-cd.sb.example.com", "sb.example.com"),
            Some(("49999", "ab-cd"))
        );
    }

    #[test]
    fn allowed_host_entries_are_names_or_addresses_without_ports() {
        assert_eq!(
            parse_allowed_host(" Petty.Internal "),
            Ok(name("petty.internal"))
        );
        assert_eq!(parse_allowed_host("::1"), Ok(ip("::1")));
        assert_eq!(parse_allowed_host("[::1]"), Ok(ip("::1")));
        assert_eq!(parse_allowed_host("10.0.0.1"), Ok(ip("10.0.0.1")));
        for (bad, why) in [
            ("", "empty"),
            ("*", "wildcard"),
            ("*.example.com", "wildcard"),
            ("https://petty.internal", "URL"),
            ("petty.internal:8080", "port"),
            ("[::1]:8080", "port"),
            ("bad name", "not a host"),
        ] {
            let e = parse_allowed_host(bad).unwrap_err();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }

    #[test]
    fn origins_normalise_and_compare_exactly() {
        assert_eq!(
            parse_origin("HTTPS://App.Example.com:443"),
            Ok("https://app.example.com".into())
        );
        assert_eq!(
            parse_origin("http://localhost:3000"),
            Ok("http://localhost:3000".into())
        );
        assert_eq!(
            parse_origin("http://[0:0::1]:80"),
            Ok("http://[::1]".into())
        );
        assert_eq!(
            parse_origin("chrome-extension://abcdef"),
            Ok("chrome-extension://abcdef".into())
        );
        for (bad, why) in [
            ("null", "null"),
            ("NULL", "null"),
            ("*", "wildcard"),
            ("app.example.com", "no scheme"),
            ("https://app.example.com/", "path"),
            ("https://app.example.com/x", "path"),
            ("https://u@app.example.com", "user info"),
            ("https://", "host"),
            ("https://app.example.com:99999", "port"),
            ("https://app.example.com:+1", "port"),
            ("https://[::1", "unclosed"),
            ("1https://a", "scheme"),
        ] {
            let e = parse_origin(bad).unwrap_err();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
        let g = guard(
            "127.0.0.1:8080",
            &[],
            &["https://app.example.com", "http://localhost:3000"],
        );
        for ok in [
            "https://app.example.com",
            "https://app.example.com:443",
            "https://APP.example.com",
            "http://localhost:3000",
        ] {
            assert!(g.origin_allowed(ok), "{ok}");
        }
        for no in [
            "http://app.example.com",
            "https://app.example.com:8443",
            "https://app.example.com.",
            "https://evil.app.example.com",
            "http://localhost",
            "http://localhost:3001",
            "null",
            "",
            "https://app.example.com/",
        ] {
            assert!(!g.origin_allowed(no), "{no}");
        }
        // None configured: no origin passes.
        assert!(!guard("127.0.0.1:8080", &[], &[]).origin_allowed("http://localhost:8080"));
    }

    #[test]
    fn writes_need_the_right_content_type() {
        let mut h = HeaderMap::new();
        assert!(!content_type_is(&h, "application/json"));
        for (value, ok) in [
            ("application/json", true),
            ("Application/JSON", true),
            ("application/json; charset=utf-8", true),
            ("application/json;charset=UTF-8", true),
            (" application/json ", true),
            ("text/plain", false),
            ("application/x-www-form-urlencoded", false),
            ("multipart/form-data; boundary=x", false),
            ("text/plain; application/json", false),
            ("application/jsonx", false),
            ("application/json-seq", false),
            ("", false),
        ] {
            h.insert(header::CONTENT_TYPE, HeaderValue::from_str(value).unwrap());
            assert_eq!(content_type_is(&h, "application/json"), ok, "{value:?}");
        }
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.append(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        assert!(
            !content_type_is(&h, "application/json"),
            "two Content-Types"
        );

        let json = Some("application/json");
        let bytes = Some("application/octet-stream");
        for (method, path, want) in [
            (Method::POST, "/v1/sandboxes", json),
            (Method::POST, "/v1/sandboxes/b/directories", json),
            (Method::POST, "/mcp", json),
            (Method::PATCH, "/v1/sandboxes/b", json),
            (Method::PUT, "/v1/sandboxes/b/files/content", bytes),
            (Method::PUT, "/v1/sandboxes/b/files/content/", json),
            (Method::PUT, "/v1/sandboxes//files/content", json),
            (Method::POST, "/v1/sandboxes/b/files/content", json),
            (Method::GET, "/v1/sandboxes", None),
            (Method::DELETE, "/v1/sandboxes/b", None),
            (Method::OPTIONS, "/v1/sandboxes", None),
        ] {
            assert_eq!(
                required_content_type(&method, path),
                want,
                "{method} {path}"
            );
        }
    }

    fn request(method: Method, path: &str, headers: &[(&str, &str)]) -> Request {
        let mut b = axum::http::Request::builder().method(method).uri(path);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(axum::body::Body::empty()).unwrap()
    }

    fn refusal(g: &Guard, req: &Request) -> (u16, &'static str) {
        match g.check(req) {
            Err(e) | Ok(Verdict::Refuse(e, _)) => (e.status, e.kind.as_str()),
            Ok(Verdict::Pass(_)) => (200, "pass"),
            Ok(Verdict::Preflight(_)) => (204, "preflight"),
        }
    }

    #[test]
    fn checks_run_host_then_origin_then_content_type() {
        let g = guard("127.0.0.1:8080", &[], &["https://app.example"]);
        let host = ("host", "127.0.0.1:8080");
        let json = ("content-type", "application/json");
        type Case<'a> = (Method, &'a [(&'a str, &'a str)], (u16, &'a str));
        let cases: &[Case] = &[
            (Method::POST, &[host, json], (200, "pass")),
            (Method::POST, &[host], (415, "unsupported_media_type")),
            (
                Method::POST,
                &[host, ("content-type", "text/plain")],
                (415, "unsupported_media_type"),
            ),
            (
                Method::POST,
                &[("host", "evil.example"), ("content-type", "text/plain")],
                (421, "misdirected_host"),
            ),
            (Method::GET, &[("host", "a b")], (400, "bad_request")),
            (Method::GET, &[], (400, "bad_request")),
            (
                Method::GET,
                &[host, ("host", "127.0.0.1")],
                (400, "bad_request"),
            ),
            (
                Method::POST,
                &[host, ("origin", "https://evil.example")],
                (403, "forbidden_origin"),
            ),
            (
                Method::GET,
                &[host, ("origin", "null")],
                (403, "forbidden_origin"),
            ),
            (
                Method::GET,
                &[
                    host,
                    ("origin", "https://app.example"),
                    ("origin", "https://app.example"),
                ],
                (403, "forbidden_origin"),
            ),
            (
                Method::POST,
                &[host, json, ("origin", "https://app.example")],
                (200, "pass"),
            ),
            (
                Method::POST,
                &[host, ("origin", "https://app.example")],
                (415, "unsupported_media_type"),
            ),
            (
                Method::OPTIONS,
                &[
                    host,
                    ("origin", "https://app.example"),
                    ("access-control-request-method", "POST"),
                ],
                (204, "preflight"),
            ),
            (
                Method::OPTIONS,
                &[
                    host,
                    ("origin", "https://evil.example"),
                    ("access-control-request-method", "POST"),
                ],
                (403, "forbidden_origin"),
            ),
            (
                Method::OPTIONS,
                &[host, ("origin", "https://app.example")],
                (200, "pass"),
            ),
        ];
        for (method, headers, want) in cases {
            let req = request(method.clone(), "/v1/sandboxes", headers);
            assert_eq!(refusal(&g, &req), *want, "{method} {headers:?}");
        }
        // HTTP/1.0 without a Host: no browser sends that; it passes.
        let mut req = request(Method::GET, "/healthz", &[]);
        *req.version_mut() = Version::HTTP_10;
        assert_eq!(refusal(&g, &req), (200, "pass"));
        // An absolute-form target names a host too.
        let req = request(Method::GET, "http://evil.example/v1/sandboxes", &[host]);
        assert_eq!(refusal(&g, &req), (421, "misdirected_host"));
    }
}
