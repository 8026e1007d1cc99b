//! `--metrics-push`: a Prometheus Pushgateway client. One `PUT` of the text exposition to
//! `URL/metrics/job/loadgen/run/<run>/instance/<instance>`, which replaces that group.
//!
//! Hand-written HTTP/1.1 over a tokio `TcpStream` rather than an HTTP crate: the exchange is
//! one request and a status line, `http://` only (a Pushgateway is an in-cluster service),
//! and every step of it is bounded by [`PUSH_TIMEOUT`] so that a gateway that hangs never
//! holds a run.

use std::time::Duration;

use base64::Engine as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The longest one push may take, connecting included.
pub const PUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest response head read.
const RESPONSE_LIMIT: usize = 8 << 10;

/// A checked `--metrics-push` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushUrl {
    pub host: String,
    pub port: u16,
    /// The path before `/metrics/job/...`, without a trailing `/` (usually empty).
    pub prefix: String,
}

impl PushUrl {
    /// Parses `http://host[:port][/prefix]`; anything else is a one-line error that says what
    /// to give.
    pub fn parse(s: &str) -> Result<PushUrl, String> {
        let t = s.trim();
        let Some(rest) = t.strip_prefix("http://") else {
            if t.starts_with("https://") {
                return Err(format!(
                    "--metrics-push '{t}': https is not supported; give the Pushgateway's http:// URL (e.g. http://pushgateway:9091)"
                ));
            }
            return Err(format!(
                "--metrics-push '{t}' is not an http:// URL; give e.g. http://pushgateway:9091"
            ));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        // The path goes into the request line as it is: nothing that would end or split it.
        if path
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '%')
        {
            return Err(format!(
                "--metrics-push '{}': the path may hold no spaces, control characters or %; give e.g. http://pushgateway:9091",
                crate::out::escape(t)
            ));
        }
        if authority.contains('@') || path.contains(['?', '#']) {
            return Err(format!(
                "--metrics-push '{t}': give only http://host:port and an optional path, without credentials, query or fragment"
            ));
        }
        let bad_port = |p: &str| {
            format!("--metrics-push '{t}': '{p}' is not a port; give e.g. http://pushgateway:9091")
        };
        let port_of = |p: &str| {
            p.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| bad_port(p))
        };
        // `[v6]:port`, `[v6]`, `host:port` or `host`.
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            match v6.split_once(']') {
                Some((h, "")) => (h, 80),
                Some((h, p)) => (h, port_of(p.strip_prefix(':').unwrap_or(p))?),
                None => (v6, 0),
            }
        } else {
            match authority.split_once(':') {
                Some((h, p)) => (h, port_of(p)?),
                None => (authority, 80),
            }
        };
        if host.is_empty() || port == 0 || host.contains([' ', '[', ']']) {
            return Err(format!(
                "--metrics-push '{t}' has no host; give e.g. http://pushgateway:9091"
            ));
        }
        Ok(PushUrl {
            host: host.to_string(),
            port,
            prefix: path.trim_end_matches('/').to_string(),
        })
    }

    /// The path of the group `job`, then `labels` in order: a value that is not plain
    /// (empty, or with characters a path segment does not keep) goes base64url-encoded, as
    /// the Pushgateway reads `name@base64/value`.
    pub fn group_path(&self, job: &str, labels: &[(&str, &str)]) -> String {
        let mut p = format!("{}/metrics", self.prefix);
        for (k, v) in std::iter::once(&("job", job)).chain(labels) {
            let plain = !v.is_empty()
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
            if plain {
                p.push_str(&format!("/{k}/{v}"));
            } else {
                let enc = base64::engine::general_purpose::URL_SAFE.encode(v.as_bytes());
                // An empty value is `=`, the Pushgateway's spelling of it.
                let enc = if enc.is_empty() { "=".to_string() } else { enc };
                p.push_str(&format!("/{k}@base64/{enc}"));
            }
        }
        p
    }

    /// `host:port` as shown to people.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// `PUT`s `body` (text exposition) to `path` of `url`, within [`PUSH_TIMEOUT`]: `Ok` on a 2xx
/// answer, else what went wrong in a few words.
pub async fn put(url: &PushUrl, path: &str, body: &str) -> Result<(), String> {
    match tokio::time::timeout(PUSH_TIMEOUT, exchange(url, path, body)).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "no answer from {} within {} s",
            url.authority(),
            PUSH_TIMEOUT.as_secs()
        )),
    }
}

async fn exchange(url: &PushUrl, path: &str, body: &str) -> Result<(), String> {
    let mut s = tokio::net::TcpStream::connect((url.host.as_str(), url.port))
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", url.authority()))?;
    let head = format!(
        "PUT {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: loadgen/{}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        url.authority(),
        env!("CARGO_PKG_VERSION"),
        body.len()
    );
    let io = |e: std::io::Error| format!("{}: {e}", url.authority());
    s.write_all(head.as_bytes()).await.map_err(io)?;
    s.write_all(body.as_bytes()).await.map_err(io)?;
    let mut got = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    // The status line, and what follows it (an error's reason) up to a limit.
    loop {
        let n = s.read(&mut buf).await.map_err(io)?;
        if n == 0 || got.len() >= RESPONSE_LIMIT {
            break;
        }
        got.extend_from_slice(&buf[..n.min(RESPONSE_LIMIT - got.len())]);
    }
    let text = String::from_utf8_lossy(&got);
    let status = text.lines().next().unwrap_or_default();
    let code = status
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| {
            format!(
                "{} did not answer HTTP: '{}'",
                url.authority(),
                crate::out::escape(&status.chars().take(80).collect::<String>())
            )
        })?;
    if (200..300).contains(&code) {
        return Ok(());
    }
    let why = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.trim())
        .unwrap_or_default();
    Err(format!(
        "the Pushgateway answered {code}{}",
        if why.is_empty() {
            String::new()
        } else {
            format!(
                ": {}",
                crate::out::escape(&why.chars().take(200).collect::<String>())
            )
        }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_urls_are_http_with_a_host_and_an_optional_port_and_path() {
        let u = PushUrl::parse("http://pushgateway:9091").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.prefix.as_str()),
            ("pushgateway", 9091, "")
        );
        let u = PushUrl::parse("http://127.0.0.1/gw/").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.prefix.as_str()),
            ("127.0.0.1", 80, "/gw")
        );
        let u = PushUrl::parse("http://[::1]:9091").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 9091));
        for (bad, says) in [
            ("https://gw:9091", "https is not supported"),
            ("gw:9091", "is not an http:// URL"),
            ("http://gw:port", "is not a port"),
            ("http://gw:0", "is not a port"),
            ("http://:9091", "has no host"),
            ("http://user:pw@gw:9091", "without credentials"),
            ("http://gw:9091/a b", "no spaces, control characters"),
            (
                "http://gw:9091/a\r\nX-Evil: 1",
                "no spaces, control characters",
            ),
        ] {
            let e = PushUrl::parse(bad).unwrap_err();
            assert!(e.contains(says) && !e.contains('\n'), "{bad}: {e}");
        }
    }

    #[test]
    fn group_paths_encode_values_a_path_segment_would_not_keep() {
        let u = PushUrl::parse("http://gw:9091").unwrap();
        assert_eq!(
            u.group_path(
                "loadgen",
                &[("run", "2026-12-01T12:00:00Z"), ("instance", "h:1")]
            ),
            "/metrics/job/loadgen/run/2026-12-01T12:00:00Z/instance/h:1"
        );
        assert_eq!(
            u.group_path("loadgen", &[("run", "a/b c"), ("instance", "")]),
            "/metrics/job/loadgen/run@base64/YS9iIGM=/instance@base64/="
        );
    }
}
