//! `--metrics-addr`: live figures for Prometheus, served at `/metrics` in the text
//! exposition format (version 0.0.4) while a run goes on.
//!
//! Hand-written rather than a registry crate: every value is already counted by the tool
//! (the engine's live totals, its histograms), so a scrape renders a snapshot, and the
//! format is a few lines per family. Latency histograms are HdrHistogram in µs, exposed in
//! seconds over fixed buckets, cumulative, with `_sum` and `_count`.
//!
//! The server answers `GET /metrics` (and `/` with a pointer to it), one request a
//! connection, each read bounded in size and time.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::error::Error;

/// Bucket bounds of the latency histograms, seconds.
pub const BUCKETS_S: [f64; 18] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];

/// The text of one scrape, family by family. Every series carries the labels the
/// exposition was made with (the run's `run`), before its own.
#[derive(Debug, Default)]
pub struct Exposition {
    text: String,
    /// `k="v",` for each label every series carries.
    labels: String,
}

impl Exposition {
    /// An exposition whose every series carries `labels`.
    pub fn with_labels(labels: &[(&str, &str)]) -> Exposition {
        let mut l = String::new();
        for (k, v) in labels {
            let _ = write!(l, "{k}=\"{}\",", escape_label(v));
        }
        Exposition {
            text: String::new(),
            labels: l,
        }
    }

    fn head(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    /// One sample: `name{labels..,own..} value`.
    fn sample(&mut self, name: &str, own: &str, value: &str) {
        let labels = format!("{}{own}", self.labels);
        let labels = labels.trim_end_matches(',');
        if labels.is_empty() {
            let _ = writeln!(self.text, "{name} {value}");
        } else {
            let _ = writeln!(self.text, "{name}{{{labels}}} {value}");
        }
    }

    /// A counter; `name` ends in `_total`.
    pub fn counter(&mut self, name: &str, help: &str, v: u64) -> &mut Self {
        self.head(name, "counter", help);
        self.sample(name, "", &v.to_string());
        self
    }

    pub fn gauge(&mut self, name: &str, help: &str, v: f64) -> &mut Self {
        self.head(name, "gauge", help);
        self.sample(name, "", &fmt_f64(v));
        self
    }

    /// A gauge of 1 whose labels describe the run (`loadgen_info{tool="..."}`).
    pub fn info(&mut self, name: &str, help: &str, labels: &[(&str, String)]) -> &mut Self {
        self.head(name, "gauge", help);
        let l: String = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\",", escape_label(v)))
            .collect();
        self.sample(name, &l, "1");
        self
    }

    /// A histogram of microsecond values, exposed in seconds.
    pub fn histogram_us(&mut self, name: &str, help: &str, h: &Histogram<u64>) -> &mut Self {
        self.head(name, "histogram", help);
        let mut counts = [0u64; BUCKETS_S.len()];
        let mut sum_us = 0f64;
        for v in h.iter_recorded() {
            let value = v.value_iterated_to();
            let n = v.count_at_value();
            sum_us += h.median_equivalent(value) as f64 * n as f64;
            // A bucket of HdrHistogram values belongs below a bound when its lowest value
            // does: a 5.000 ms sample is in le="0.005".
            let s = h.lowest_equivalent(value) as f64 / 1e6;
            if let Some(i) = BUCKETS_S.iter().position(|b| s <= *b) {
                counts[i] += n;
            }
        }
        let mut cumulative = 0;
        let bucket = format!("{name}_bucket");
        for (b, n) in BUCKETS_S.iter().zip(counts) {
            cumulative += n;
            self.sample(
                &bucket,
                &format!("le=\"{}\"", fmt_f64(*b)),
                &cumulative.to_string(),
            );
        }
        self.sample(&bucket, "le=\"+Inf\"", &h.len().to_string());
        self.sample(&format!("{name}_sum"), "", &fmt_f64(sum_us / 1e6));
        self.sample(&format!("{name}_count"), "", &h.len().to_string());
        self
    }

    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.text)
    }
}

fn fmt_f64(v: f64) -> String {
    if v.is_finite() {
        format!("{v}")
    } else if v.is_nan() {
        "NaN".into()
    } else if v > 0.0 {
        "+Inf".into()
    } else {
        "-Inf".into()
    }
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// What a scrape shows: called for every request.
pub type Source = Arc<dyn Fn() -> String + Send + Sync>;

/// A tool's families, added to an exposition that carries the run's labels: called for
/// every scrape and every push ([`crate::live`]).
pub type Families = Arc<dyn Fn(&mut Exposition) + Send + Sync>;

/// Binds `--metrics-addr` before the run, so a port in use stops it at once.
pub fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, Error> {
    let l = std::net::TcpListener::bind(addr).map_err(|e| {
        Error::usage(format!(
            "--metrics-addr {addr} cannot be listened on ({e}); choose another address or port"
        ))
    })?;
    l.set_nonblocking(true)
        .map_err(|e| Error::failed(format!("--metrics-addr {addr}"), e))?;
    Ok(l)
}

/// Longest request head read, and how long a client may take to send it.
const REQUEST_LIMIT: usize = 8 << 10;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves `/metrics` from `source` on `listener` until `stop`.
pub async fn serve(listener: std::net::TcpListener, source: Source, stop: CancellationToken) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!("--metrics-addr: {e}");
            return;
        }
    };
    loop {
        let (stream, _) = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::debug!("metrics accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let source = source.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(REQUEST_TIMEOUT, answer(stream, source)).await;
        });
    }
}

async fn answer(mut s: tokio::net::TcpStream, source: Source) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > REQUEST_LIMIT {
            return respond(
                &mut s,
                "431 Request Header Fields Too Large",
                "text/plain",
                "",
            )
            .await;
        }
    }
    let line = head.split(|b| *b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split(' ');
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET" | "HEAD", "/metrics") => {
            let body = source();
            respond(
                &mut s,
                "200 OK",
                "text/plain; version=0.0.4; charset=utf-8",
                &body,
            )
            .await
        }
        ("GET" | "HEAD", "/") => {
            respond(
                &mut s,
                "200 OK",
                "text/plain",
                "loadgen: metrics at /metrics\n",
            )
            .await
        }
        ("GET" | "HEAD", _) => respond(&mut s, "404 Not Found", "text/plain", "not found\n").await,
        _ => respond(&mut s, "405 Method Not Allowed", "text/plain", "").await,
    }
}

async fn respond(
    s: &mut tokio::net::TcpStream,
    status: &str,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await?;
    s.write_all(body.as_bytes()).await?;
    s.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_buckets_in_seconds() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).unwrap();
        for v in [50, 200, 200, 3_000, 2_000_000] {
            h.record(v).unwrap();
        }
        let text = Exposition::default()
            .counter("x_total", "a count", 7)
            .histogram_us("lat_seconds", "latency", &h)
            .finish();
        assert!(
            text.contains("# TYPE x_total counter\nx_total 7\n"),
            "{text}"
        );
        assert!(
            text.contains("lat_seconds_bucket{le=\"0.0001\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("lat_seconds_bucket{le=\"0.00025\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("lat_seconds_bucket{le=\"0.005\"} 4\n"),
            "{text}"
        );
        assert!(text.contains("lat_seconds_bucket{le=\"1\"} 4\n"), "{text}");
        assert!(
            text.contains("lat_seconds_bucket{le=\"2.5\"} 5\n"),
            "{text}"
        );
        assert!(
            text.contains("lat_seconds_bucket{le=\"+Inf\"} 5\n"),
            "{text}"
        );
        assert!(text.contains("lat_seconds_count 5\n"), "{text}");
        let sum: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("lat_seconds_sum "))
            .unwrap()
            .parse()
            .unwrap();
        assert!((sum - 2.00345).abs() < 0.002, "{sum}");
    }

    #[test]
    fn every_series_carries_the_expositions_labels_escaped() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).unwrap();
        h.record(50).unwrap();
        let text = Exposition::with_labels(&[("run", "a \"b\"\\")])
            .counter("x_total", "a count", 7)
            .info("i", "info", &[("tool", "t".into())])
            .histogram_us("lat_seconds", "latency", &h)
            .finish();
        let run = r#"run="a \"b\"\\""#;
        for want in [
            format!("x_total{{{run}}} 7\n"),
            format!("i{{{run},tool=\"t\"}} 1\n"),
            format!("lat_seconds_bucket{{{run},le=\"0.0001\"}} 1\n"),
            format!("lat_seconds_bucket{{{run},le=\"+Inf\"}} 1\n"),
            format!("lat_seconds_count{{{run}}} 1\n"),
        ] {
            assert!(text.contains(&want), "{want} in\n{text}");
        }
    }

    #[tokio::test]
    async fn the_server_answers_metrics_and_nothing_else() {
        let l = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = l.local_addr().unwrap();
        let stop = CancellationToken::new();
        let task = tokio::spawn(serve(l, Arc::new(|| "up 1\n".to_string()), stop.clone()));
        let get = |path: &'static str| async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        let m = get("/metrics").await;
        assert!(m.starts_with("HTTP/1.1 200 OK\r\n"), "{m}");
        assert!(m.contains("version=0.0.4"), "{m}");
        assert!(m.ends_with("\r\n\r\nup 1\n"), "{m}");
        assert!(get("/nope").await.starts_with("HTTP/1.1 404"));
        let e = bind(addr).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(
            e.to_string().contains("choose another address or port"),
            "{e}"
        );
        stop.cancel();
        task.await.unwrap();
    }
}
