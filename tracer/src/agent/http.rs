//! The agent's HTTP server: `/metrics` (OpenMetrics for Prometheus, the
//! classic text format for others) and `/healthz`, hardened for a port
//! that anyone who reaches the node can open.

use crate::sinks::metrics::Metrics;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use prometheus_client::registry::Registry;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Shared between the event loop and the HTTP server.
pub(super) struct Shared {
    pub registry: Registry,
    pub metrics: Arc<Mutex<Metrics>>,
    pub ready: AtomicBool,
}

/// Connections served at once. Past it, each new connection closes the
/// oldest one still open, so that a flood of idle or half-sent
/// connections (anyone who can reach the port can open them) can neither
/// exhaust the agent's fds and memory nor lock out the kubelet's
/// `/healthz` probe and the scraper, which are served in milliseconds.
/// A scraper and the probes need a handful. With 3,000 connections held,
/// the heap grew 11-13 MB at 64 and 21 MB at 256.
const MAX_CONNECTIONS: usize = 64;
/// Headers must arrive within this; a whole connection lives at most
/// `CONNECTION_LIFETIME` (a scraper simply reconnects).
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECTION_LIFETIME: Duration = Duration::from_secs(30);
/// Per-connection read buffer: a request is a few hundred bytes, and
/// larger headers get 431.
const MAX_BUF: usize = 16 * 1024;

/// The open connections, oldest first (by accept order).
#[derive(Default)]
struct Connections {
    open: std::collections::BTreeMap<u64, tokio::task::AbortHandle>,
    next: u64,
}

pub(super) async fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    let conns = Arc::new(Mutex::new(Connections::default()));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of fds and the like: try again shortly.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let shared = shared.clone();
        let mut c = conns.lock().unwrap_or_else(|e| e.into_inner());
        while c.open.len() >= MAX_CONNECTIONS {
            if let Some((_, oldest)) = c.open.pop_first() {
                oldest.abort();
            }
        }
        let id = c.next;
        c.next += 1;
        let done = conns.clone();
        let task = tokio::spawn(async move {
            serve_one(stream, shared).await;
            done.lock()
                .unwrap_or_else(|e| e.into_inner())
                .open
                .remove(&id);
        });
        // The task removes itself under this lock, so after this insert.
        c.open.insert(id, task.abort_handle());
    }
}

async fn serve_one(stream: tokio::net::TcpStream, shared: Arc<Shared>) {
    let svc = hyper::service::service_fn(move |req| {
        let shared = shared.clone();
        async move { Ok::<_, std::convert::Infallible>(handle(&shared, &req)) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_BUF)
        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
    let _ = tokio::time::timeout(CONNECTION_LIFETIME, conn).await;
}

/// Prometheus asks for OpenMetrics in its Accept header; curl, promtool
/// and older scrapers do not, and get the classic text format.
fn wants_openmetrics<B>(req: &Request<B>) -> bool {
    req.headers()
        .get_all(hyper::header::ACCEPT)
        .iter()
        .any(|v| {
            v.to_str()
                .is_ok_and(|v| v.contains("application/openmetrics-text"))
        })
}

/// OpenMetrics text as the classic format 0.0.4: there a counter's HELP
/// and TYPE name its sample (`tracer_drops_total`, where OpenMetrics says
/// `tracer_drops`), and there is no `# EOF`. Label values are escaped the
/// same way in both.
fn classic_text(om: &str) -> String {
    let mut out = String::with_capacity(om.len());
    let mut help: Option<&str> = None;
    for line in om.lines() {
        if line.starts_with("# HELP ") {
            // Held until its TYPE line says whether it is a counter.
            help = Some(line);
            continue;
        }
        let counter = line
            .strip_prefix("# TYPE ")
            .and_then(|t| t.strip_suffix(" counter"));
        let help_line = help.take();
        match counter {
            Some(name) => {
                if let Some(h) = help_line.and_then(|h| h.strip_prefix("# HELP ")) {
                    let text = h.strip_prefix(name).unwrap_or(h);
                    let _ = writeln!(out, "# HELP {name}_total{text}");
                }
                let _ = writeln!(out, "# TYPE {name}_total counter");
            }
            None if line == "# EOF" || line.starts_with("# UNIT ") => {}
            None => {
                if let Some(h) = help_line {
                    out.push_str(h);
                    out.push('\n');
                }
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

fn handle(shared: &Shared, req: &Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let reply = |code: StatusCode, ctype: &str, body: String| {
        Response::builder()
            .status(code)
            .header("content-type", ctype)
            .body(Full::new(Bytes::from(body)))
            .expect("static response parts")
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        );
    }
    match req.uri().path() {
        "/metrics" => {
            shared
                .metrics
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .refresh_process();
            let mut body = String::new();
            if prometheus_client::encoding::text::encode(&mut body, &shared.registry).is_err() {
                return reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    "encoding failed\n".into(),
                );
            }
            if wants_openmetrics(req) {
                return reply(
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    body,
                );
            }
            reply(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                classic_text(&body),
            )
        }
        "/healthz" if shared.ready.load(Ordering::SeqCst) => {
            reply(StatusCode::OK, "text/plain", "ok\n".into())
        }
        "/healthz" => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "probes not attached\n".into(),
        ),
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "try /metrics or /healthz\n".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sinks::metrics::tests::{dl, text};
    use std::time::Instant;

    #[test]
    fn classic_text_names_counters_by_their_samples() {
        let mut m = Metrics::new(10);
        m.drops.add(dl("IP_RPFILTER", "a"), 2, Instant::now());
        let t = classic_text(&text(&m));
        assert!(
            t.contains("# HELP tracer_drops_total Packets the kernel dropped"),
            "{t}"
        );
        assert!(
            t.contains("# TYPE tracer_drops_total counter\ntracer_drops_total{"),
            "{t}"
        );
        assert!(
            t.contains("# TYPE process_open_fds gauge\nprocess_open_fds "),
            "{t}"
        );
        assert!(
            !t.contains("# EOF") && !t.contains("# TYPE tracer_drops counter"),
            "{t}"
        );
    }
}
