//! The agent's status feed and HTTP server: a background task keeps one status snapshot
//! fresh, and a small read-only HTTP/1.1 server (hyper, on the agent's own tokio runtime)
//! serves it as the dashboard page, `/api/status` and `/metrics`.
//!
//! # Who does what, in which order
//! 1. Every `web.refresh` the refresher notes the totals' epoch, reads the kernel on a
//!    blocking thread with sockets of its own ([`crate::status::kernel::read`]) — the agent
//!    loop and the kernel actor never wait for it — then folds the rule counters into the
//!    running totals ([`Hub::totals`]).
//! 2. It asks the agent loop for its figures and for what it knows of the top offenders,
//!    through the same channel as the control socket (two small requests, answered from
//!    memory), assembles the [`Status`], offers a point to the 24 h history and publishes
//!    the snapshot. Requests are then served from that snapshot: a page view never reads
//!    the kernel.
//! 3. With `[web] enabled = false` there is no server, but the refresher still samples the
//!    rule counters (a small rules dump, no elements), so totals stay right for
//!    `fwagent status`.
//!
//! The loop brackets its own re-applies of the table with [`Hub::begin_reinstall`] and
//! [`Hub::end_reinstall`] (see [`crate::status::totals`] for why).
//!
//! # HTTP
//! GET and HEAD only (405 with `Allow` otherwise), 404 for unknown paths, 503 until the first
//! snapshot exists. Every answer carries `X-Content-Type-Options: nosniff` and a
//! Content-Security-Policy that allows only this origin's script, style and fetches; JSON
//! and metrics are `no-store`. Connections are capped in number and lifetime, headers must
//! arrive within a few seconds: the server is read-only but must not become a way to pin the
//! agent's memory.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request as HttpRequest, Response as HttpResponse, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::AgentFigures;
use super::kernel::KernelHandle;
use super::server::Call;
use crate::config;
use crate::control::Request;
use crate::nft::{Features, Nft, RuleCounter, Schema};
use crate::status::totals::{Carried, History, HistoryJson, Sample, Totals};
use crate::status::{
    self, AgentInput, BanMeta, KernelInput, KernelView, Status, assemble, ban_key, metrics,
};

/// The 24 h history: one point per 5 minutes.
const HISTORY_EVERY: u64 = 300;
const HISTORY_SPAN: u64 = 24 * 3600;
/// Open connections at once; more are closed at accept.
const MAX_CONNECTIONS: usize = 32;
/// Longest life of one connection (keep-alive included).
const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// Time allowed for a request's headers to arrive.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest request head accepted (431 beyond); our routes need a few hundred bytes.
const MAX_HEAD: usize = 16 * 1024;
/// How long the refresher waits for the agent loop's answer.
const LOOP_TIMEOUT: Duration = Duration::from_secs(10);

const PAGE: &str = include_str!("../status/assets/index.html");
const SCRIPT: &str = include_str!("../status/assets/dashboard.js");
const STYLE: &str = include_str!("../status/assets/dashboard.css");

/// Only this origin's script, style and fetches; nothing inline, no frames, no forms.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// What the agent loop, the refresher and the server share.
pub struct Hub {
    totals: Mutex<Totals>,
    history: Mutex<History>,
    latest: RwLock<Option<Arc<Status>>>,
}

impl Hub {
    pub fn new() -> Arc<Hub> {
        Arc::new(Hub {
            totals: Mutex::new(Totals::new()),
            history: Mutex::new(History::new(HISTORY_EVERY, HISTORY_SPAN)),
            latest: RwLock::new(None),
        })
    }

    fn totals(&self) -> std::sync::MutexGuard<'_, Totals> {
        // A panic while holding the lock leaves plain numbers behind: keep using them.
        self.totals.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn hist(&self) -> std::sync::MutexGuard<'_, History> {
        self.history.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The agent is about to re-apply the table. `last` is its final sample of the rules
    /// being replaced, when they could still be read.
    pub fn begin_reinstall(&self, last: Option<&[RuleCounter]>) {
        let mut t = self.totals();
        t.begin_reinstall();
        if let Some(c) = last {
            t.observe_final(c);
        }
    }

    /// The re-apply is done; `recreated` when the rules were created anew.
    pub fn end_reinstall(&self, recreated: bool) {
        self.totals().end_reinstall(recreated);
    }

    /// The running totals' state, for `status`.
    pub fn carried(&self) -> Vec<Carried> {
        self.totals().carried()
    }

    pub fn history(&self) -> HistoryJson {
        self.hist().json()
    }

    /// The newest snapshot, if one was made yet.
    pub fn latest(&self) -> Option<Arc<Status>> {
        self.latest
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn publish(&self, st: Status) {
        *self.latest.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(st));
    }
}

/// Reads our rule counters on a socket of its own (for the final sample before a re-apply).
pub async fn counters(schema: Schema, features: Features) -> Option<Vec<RuleCounter>> {
    tokio::task::spawn_blocking(move || Nft::open_with(features)?.counters(&schema))
        .await
        .ok()?
        .ok()
}

/// Where the refresher gets its figures.
pub struct Feed {
    /// The kernel actor (for the current schema); `None` in a dry run.
    pub kernel: Option<KernelHandle>,
    pub features: Features,
    /// The schema at start (used when there is no kernel actor to ask).
    pub schema: Schema,
    /// The agent loop's request channel (the control socket's).
    pub calls: mpsc::Sender<Call>,
}

/// Starts the refresher and, when `[web] enabled`, the HTTP server on `web.listen`.
/// A bind failure is returned (the caller logs it and runs on without the dashboard).
pub fn start(web: &config::Web, hub: Arc<Hub>, feed: Feed) -> Result<()> {
    let full = web.enabled;
    if !web.enabled {
        tokio::spawn(refresher(hub, feed, web.refresh, false));
        return Ok(());
    }
    let listener = bind(web.listen)?;
    if !web.listen.ip().is_loopback() {
        tracing::warn!(listen = %web.listen, "the dashboard listens beyond loopback: it is read-only, but shows banned addresses to anyone who can reach it");
    }
    let page = Bytes::from(PAGE.replace("{{REFRESH_MS}}", &web.refresh.as_millis().to_string()));
    tokio::spawn(refresher(hub.clone(), feed, web.refresh, full));
    tokio::spawn(serve(listener, Arc::new(App { hub, page })));
    tracing::info!(listen = %web.listen, refresh = ?web.refresh, "dashboard and metrics served");
    Ok(())
}

fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener> {
    let l = std::net::TcpListener::bind(addr)
        .with_context(|| format!("binding the dashboard to {addr}"))?;
    l.set_nonblocking(true)
        .with_context(|| format!("configuring the dashboard socket {addr}"))?;
    tokio::net::TcpListener::from_std(l)
        .with_context(|| format!("registering the dashboard socket {addr}"))
}

/// Sends one request to the agent loop and waits (bounded) for the answer.
async fn ask(calls: &mpsc::Sender<Call>, req: Request) -> Option<crate::control::Response> {
    let (tx, rx) = oneshot::channel();
    calls.send((req, tx)).await.ok()?;
    tokio::time::timeout(LOOP_TIMEOUT, rx).await.ok()?.ok()
}

/// Keeps the snapshot (or, without the web, just the totals) fresh. See the module docs.
async fn refresher(hub: Arc<Hub>, feed: Feed, every: Duration, full: bool) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let host = status::host_name();
    let mut good: Option<(KernelView, SystemTime)> = None;
    loop {
        tick.tick().await;
        let schema = feed
            .kernel
            .as_ref()
            .map(|k| k.schema())
            .unwrap_or_else(|| feed.schema.clone());
        let epoch = hub.totals().epoch();
        if !full {
            if feed.kernel.is_some()
                && let Some(c) = counters(schema, feed.features).await
            {
                hub.totals().observe(epoch, &c);
            }
            continue;
        }
        let error = if feed.kernel.is_none() {
            Some("dry run: the agent does not touch the kernel".to_string())
        } else {
            let (s, f) = (schema.clone(), feed.features);
            match tokio::task::spawn_blocking(move || status::kernel::read(&s, f)).await {
                Ok(Ok(view)) => {
                    hub.totals().observe(epoch, &view.counters);
                    good = Some((view, SystemTime::now()));
                    None
                }
                Ok(Err(e)) => Some(e.to_string()),
                Err(e) => Some(format!("the kernel read stopped: {e}")),
            }
        };
        // A dry run has no kernel by design: nothing to warn about.
        if let Some(e) = &error
            && feed.kernel.is_some()
        {
            tracing::warn!(error = %e, "status: cannot read the kernel");
        }
        let kernel = KernelInput {
            view: good.as_ref().map(|(v, _)| v.clone()),
            read_at: good.as_ref().map(|(_, t)| *t),
            error,
        };
        let agent = agent_input(&feed.calls, &kernel, schema.ipv6_prefix).await;
        let mut st = assemble(&schema, &kernel, agent, SystemTime::now(), host.clone());
        // The history point is made of the assembled figures (totals included), then the
        // snapshot shows the ring with it.
        if let Some(a) = &mut st.agent {
            hub.hist().offer(Sample {
                at_unix: st.generated_at_unix,
                bans: a.rules.iter().map(|r| r.bans).sum(),
                dropped_packets: st
                    .drops
                    .iter()
                    .map(|d| d.packets_total.unwrap_or(d.packets))
                    .sum(),
                blocked: st.blocked.total,
            });
            a.history = hub.history();
        }
        hub.publish(st);
        // Give back what a large element dump took, so RSS settles between refreshes.
        #[cfg(target_env = "gnu")]
        // SAFETY: malloc_trim only releases free heap memory; it has no preconditions.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

async fn agent_input(calls: &mpsc::Sender<Call>, kernel: &KernelInput, prefix: u8) -> AgentInput {
    let figures = match ask(calls, Request::Status).await {
        Some(r) if r.ok => match serde_json::from_value::<AgentFigures>(r.data) {
            Ok(f) => f,
            Err(e) => return AgentInput::Absent(format!("unreadable agent figures: {e}")),
        },
        Some(r) => return AgentInput::Absent(r.message),
        None => return AgentInput::Absent("the agent loop did not answer in time".into()),
    };
    let targets: Vec<String> = kernel
        .view
        .as_ref()
        .map(|v| v.top.iter().map(|e| ban_key(&e.target, prefix)).collect())
        .unwrap_or_default();
    let bans = if targets.is_empty() {
        Vec::new()
    } else {
        match ask(calls, Request::Bans { targets }).await {
            Some(r) if r.ok => serde_json::from_value::<Vec<BanMeta>>(r.data).unwrap_or_default(),
            _ => Vec::new(),
        }
    };
    AgentInput::Running {
        figures: Box::new(figures),
        bans,
    }
}

/// The server's state: the hub and the page with its refresh interval filled in.
struct App {
    hub: Arc<Hub>,
    page: Bytes,
}

async fn serve(listener: tokio::net::TcpListener, app: Arc<App>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "dashboard: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "dashboard: too many connections; closing");
            continue;
        };
        let app = app.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let app = app.clone();
                async move { Ok::<_, Infallible>(app.handle(&req)) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_header_size(MAX_HEAD)
                .max_headers(64)
                .max_buf_size(MAX_HEAD * 2)
                .serve_connection(TokioIo::new(stream), svc);
            if let Ok(Err(e)) = tokio::time::timeout(CONNECTION_LIFETIME, conn).await {
                tracing::debug!(%peer, error = %e, "dashboard connection");
            }
            drop(slot);
        });
    }
}

/// What a path serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Page,
    Script,
    Style,
    Api,
    Metrics,
}

impl Route {
    fn of(path: &str) -> Option<Route> {
        Some(match path {
            "/" | "/index.html" => Route::Page,
            "/dashboard.js" => Route::Script,
            "/dashboard.css" => Route::Style,
            "/api/status" => Route::Api,
            "/metrics" => Route::Metrics,
            _ => return None,
        })
    }
}

impl App {
    fn handle(&self, req: &HttpRequest<Incoming>) -> HttpResponse<Full<Bytes>> {
        let Some(route) = Route::of(req.uri().path()) else {
            return plain(StatusCode::NOT_FOUND, "not found\n");
        };
        let head = req.method() == Method::HEAD;
        if !head && req.method() != Method::GET {
            let mut r = plain(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed: this server is read-only\n",
            );
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return r;
        }
        let (body, kind, store): (Bytes, &'static str, bool) = match route {
            Route::Page => (self.page.clone(), "text/html; charset=utf-8", false),
            Route::Script => (
                Bytes::from_static(SCRIPT.as_bytes()),
                "text/javascript; charset=utf-8",
                false,
            ),
            Route::Style => (
                Bytes::from_static(STYLE.as_bytes()),
                "text/css; charset=utf-8",
                false,
            ),
            Route::Api | Route::Metrics => {
                let Some(st) = self.hub.latest() else {
                    let mut r = plain(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "the first status snapshot is not ready yet\n",
                    );
                    r.headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                    return r;
                };
                if route == Route::Api {
                    let mut v = serde_json::to_vec_pretty(&*st).unwrap_or_default();
                    v.push(b'\n');
                    (Bytes::from(v), "application/json", true)
                } else {
                    (
                        Bytes::from(metrics::render(&st)),
                        metrics::CONTENT_TYPE,
                        true,
                    )
                }
            }
        };
        respond(StatusCode::OK, kind, body, store, head)
    }
}

fn plain(code: StatusCode, text: &'static str) -> HttpResponse<Full<Bytes>> {
    respond(
        code,
        "text/plain; charset=utf-8",
        Bytes::from_static(text.as_bytes()),
        true,
        false,
    )
}

/// A response with the headers every answer carries. HEAD gets the same headers (the
/// length of the body GET would send) and no body.
fn respond(
    code: StatusCode,
    kind: &'static str,
    body: Bytes,
    no_store: bool,
    head: bool,
) -> HttpResponse<Full<Bytes>> {
    let len = body.len();
    let mut r = HttpResponse::new(Full::new(if head { Bytes::new() } else { body }));
    *r.status_mut() = code;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(if no_store { "no-store" } else { "no-cache" }),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(Route::of("/"), Some(Route::Page));
        assert_eq!(Route::of("/api/status"), Some(Route::Api));
        assert_eq!(Route::of("/metrics"), Some(Route::Metrics));
        assert_eq!(Route::of("/metrics/"), None);
        assert_eq!(Route::of("/../etc/passwd"), None);
    }

    #[test]
    fn every_answer_carries_the_security_headers() {
        let r = respond(
            StatusCode::OK,
            "application/json",
            Bytes::from("{}"),
            true,
            true,
        );
        let h = r.headers();
        assert_eq!(h[header::CACHE_CONTROL], "no-store");
        assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(h[header::CONTENT_LENGTH], "2");
        assert!(
            h[header::CONTENT_SECURITY_POLICY]
                .to_str()
                .unwrap()
                .starts_with("default-src 'none'")
        );
    }

    #[test]
    fn the_page_refers_only_to_embedded_assets() {
        for tag in ["src=\"", "href=\""] {
            for part in PAGE.split(tag).skip(1) {
                let url = part.split('"').next().unwrap();
                assert!(
                    Route::of(&format!("/{url}")).is_some(),
                    "{url} is not served by the agent"
                );
            }
        }
        assert!(PAGE.contains("{{REFRESH_MS}}"));
        assert!(
            !PAGE.contains("<script>") && !PAGE.contains("style="),
            "no inline code"
        );
    }
}
