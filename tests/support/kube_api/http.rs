//! The test API server's HTTP side: routes, list and watch responses, and the discovery
//! documents kubectl reads before it lists anything (TokenReview is in `review.rs`).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc};

use super::store::{Change, Res, Selector};
use super::{fixture, Inner, Signal};

pub(super) type Body = BoxBody<Bytes, std::io::Error>;

pub async fn serve(listener: tokio::net::TcpListener, inner: Arc<Inner>) {
    loop {
        let Ok((sock, _)) = listener.accept().await else {
            continue;
        };
        let inner = inner.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let inner = inner.clone();
                async move { Ok::<_, Infallible>(route(req, inner).await) }
            });
            let _ =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(sock), svc)
                    .await;
        });
    }
}

pub(super) fn json_response(code: StatusCode, v: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(
            Full::new(Bytes::from(v.to_string()))
                .map_err(|e| match e {})
                .boxed(),
        )
        .unwrap()
}

/// A `Status` failure, the body every API error has.
pub(super) fn status(code: u16, reason: &str, message: &str) -> Response<Body> {
    json_response(
        StatusCode::from_u16(code).unwrap(),
        &json!({ "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                 "message": message, "reason": reason, "code": code }),
    )
}

fn query(req: &Request<Incoming>) -> Vec<(String, String)> {
    req.uri().query().map(url_pairs).unwrap_or_default()
}

fn url_pairs(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (unescape(k), unescape(v))
        })
        .collect()
}

fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let h = std::str::from_utf8(&b[i + 1..i + 3]).ok();
                match h.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn route(req: Request<Incoming>, inner: Arc<Inner>) -> Response<Body> {
    let path = req.uri().path().trim_end_matches('/').to_string();
    inner.requests.lock().unwrap().push(format!(
        "{} {}?{}",
        req.method(),
        path,
        req.uri().query().unwrap_or("")
    ));
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let doc = |f: &str| json_response(StatusCode::OK, &fixture(f));
    match (req.method().as_str(), segs.as_slice()) {
        ("GET", ["version"]) => doc("version.json"),
        ("GET", ["api"]) => doc("api.json"),
        ("GET", ["apis"]) => doc("apis.json"),
        ("GET", ["api", "v1"]) => doc("api-v1.json"),
        ("GET", ["apis", "discovery.k8s.io", "v1"]) => doc("discovery-v1.json"),
        ("GET", ["apis", "authentication.k8s.io", "v1"]) => doc("authentication-v1.json"),
        ("POST", ["apis", "authentication.k8s.io", "v1", "tokenreviews"]) => {
            super::review::token_review(req, &inner).await
        }
        ("GET", ["api", "v1", rest @ ..]) => resource(&req, &inner, "", rest).await,
        ("GET", ["apis", group, "v1", rest @ ..]) => {
            let group = group.to_string();
            resource(&req, &inner, &group, rest).await
        }
        _ => status(
            404,
            "NotFound",
            "the server could not find the requested resource",
        ),
    }
}

/// `[plural]`, `[plural, name]`, `[namespaces, ns, plural]`, `[namespaces, ns, plural, name]`.
async fn resource(
    req: &Request<Incoming>,
    inner: &Arc<Inner>,
    group: &str,
    rest: &[&str],
) -> Response<Body> {
    let (ns, plural, name) = match rest {
        [p] => (None, *p, None),
        [p, n] if *p != "namespaces" => (None, *p, Some(*n)),
        ["namespaces", ns, p] => (Some(*ns), *p, None),
        ["namespaces", ns, p, n] => (Some(*ns), *p, Some(*n)),
        _ => {
            return status(
                404,
                "NotFound",
                "the server could not find the requested resource",
            )
        }
    };
    let Some(res) = Res::from_plural(group, plural) else {
        return status(
            404,
            "NotFound",
            "the server could not find the requested resource",
        );
    };
    if inner.forbidden.lock().unwrap().contains(&res) {
        let scope = ns.map_or("at the cluster scope".to_string(), |n| {
            format!("in the namespace {n:?}")
        });
        return status(403, "Forbidden", &format!(
            "{plural} is forbidden: User \"system:serviceaccount:spoke-system:spoke-control\" cannot list resource \"{plural}\" in API group \"{group}\" {scope}"
        ));
    }
    if let Some(name) = name {
        let got = inner.store.lock().unwrap().get(res, ns.unwrap_or(""), name);
        return match got {
            Some(o) => json_response(StatusCode::OK, &o),
            None => status(404, "NotFound", &format!("{plural} {name:?} not found")),
        };
    }
    let q = query(req);
    let get = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let mut sel = Selector {
        namespace: ns.map(str::to_string),
        ..Selector::default()
    };
    match (
        Selector::terms(get("labelSelector").unwrap_or("")),
        Selector::terms(get("fieldSelector").unwrap_or("")),
    ) {
        (Ok(l), Ok(f)) => {
            sel.labels = l;
            sel.fields = f;
        }
        (Err(e), _) | (_, Err(e)) => return status(400, "BadRequest", &e),
    }
    let table = req
        .headers()
        .get("accept")
        .and_then(|a| a.to_str().ok())
        .is_some_and(|a| a.contains("as=Table"));
    if matches!(get("watch"), Some("1" | "true")) {
        let opts = WatchOpts {
            res,
            sel,
            from: get("resourceVersion").unwrap_or("").to_string(),
            bookmarks: matches!(get("allowWatchBookmarks"), Some("true" | "1")),
            timeout: get("timeoutSeconds").and_then(|t| t.parse().ok()),
            table,
        };
        return watch(inner, opts);
    }
    let limit = get("limit").and_then(|l| l.parse().ok()).filter(|l| *l > 0);
    let store = inner.store.lock().unwrap();
    match store.list(res, &sel, limit, get("continue")) {
        Err(e) if e == "too old" => status(
            410,
            "Expired",
            "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
        ),
        Err(e) => status(400, "BadRequest", &e),
        Ok((items, cont)) => {
            let mut meta = json!({ "resourceVersion": store.rv.to_string() });
            if let Some(c) = cont {
                meta["continue"] = json!(c);
            }
            let body = if table {
                super::http_table::table(res, &items, meta)
            } else {
                // List items carry no kind/apiVersion on the wire; the list does.
                let items: Vec<Value> = items
                    .into_iter()
                    .map(|mut o| {
                        let m = o.as_object_mut().unwrap();
                        m.remove("kind");
                        m.remove("apiVersion");
                        o
                    })
                    .collect();
                json!({ "kind": format!("{}List", res.kind()), "apiVersion": res.api_version(),
                        "metadata": meta, "items": items })
            };
            json_response(StatusCode::OK, &body)
        }
    }
}

struct WatchOpts {
    res: Res,
    sel: Selector,
    from: String,
    bookmarks: bool,
    timeout: Option<u64>,
    table: bool,
}

/// A chunked stream of `{"type": ..., "object": ...}` lines.
fn watch(inner: &Arc<Inner>, o: WatchOpts) -> Response<Body> {
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(256);
    // Backlog and subscription under one lock, so no change falls between them.
    let store = inner.store.lock().unwrap();
    let mut signals = inner.signals.subscribe();
    let mut backlog: Vec<(String, Value)> = Vec::new();
    let mut expired = false;
    match o.from.as_str() {
        // "Any": the current state as ADDED events, then changes.
        "" | "0" => {
            let (items, _) = store.list(o.res, &o.sel, None, None).unwrap_or_default();
            backlog.extend(items.into_iter().map(|i| ("ADDED".to_string(), i)));
        }
        v => match v.parse::<u64>() {
            Ok(rv) if rv >= store.oldest => backlog.extend(
                store
                    .history
                    .iter()
                    .filter(|c| c.rv > rv && c.res == o.res && o.sel.matches(&c.object))
                    .map(|c| (c.kind.to_string(), c.object.clone())),
            ),
            Ok(_) => expired = true,
            Err(_) => {
                return status(
                    400,
                    "BadRequest",
                    &format!("invalid resource version {v:?}"),
                )
            }
        },
    }
    let mut last_rv = store.rv;
    let oldest = store.oldest;
    drop(store);
    let line = move |kind: &str, obj: &Value, table: bool| {
        let obj = if table && kind != "BOOKMARK" && kind != "ERROR" {
            super::http_table::table(o.res, std::slice::from_ref(obj), json!({}))
        } else {
            obj.clone()
        };
        Ok(Frame::data(Bytes::from(format!(
            "{}\n",
            json!({ "type": kind, "object": obj })
        ))))
    };
    let res = o.res;
    let sel = o.sel.clone();
    let table = o.table;
    tokio::spawn(async move {
        if expired {
            let _ = tx.send(line("ERROR", &gone(&o.from, oldest), false)).await;
            return;
        }
        for (k, obj) in &backlog {
            if tx.send(line(k, obj, table)).await.is_err() {
                return;
            }
        }
        let deadline = tokio::time::sleep(Duration::from_secs(o.timeout.unwrap_or(1800)));
        tokio::pin!(deadline);
        let mut bookmark = tokio::time::interval(Duration::from_millis(500));
        loop {
            let out = tokio::select! {
                _ = &mut deadline => return,
                _ = bookmark.tick(), if o.bookmarks => line("BOOKMARK", &json!({
                    "kind": res.kind(), "apiVersion": res.api_version(),
                    "metadata": { "resourceVersion": last_rv.to_string() } }), false),
                s = signals.recv() => match s {
                    Ok(Signal::Change(Change { rv, res: r, kind, object })) => {
                        last_rv = rv;
                        if r != res || !sel.matches(&object) {
                            continue;
                        }
                        line(kind, &object, table)
                    }
                    Ok(Signal::Expire) | Err(broadcast::error::RecvError::Lagged(_)) => {
                        let _ = tx.send(line("ERROR", &gone(&last_rv.to_string(), last_rv), false)).await;
                        return;
                    }
                    Ok(Signal::Break) | Err(broadcast::error::RecvError::Closed) => {
                        let _ = tx.send(Err(std::io::Error::other("watch broken by the test"))).await;
                        return;
                    }
                },
            };
            if tx.send(out).await.is_err() {
                return;
            }
        }
    });
    Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .header("transfer-encoding", "chunked")
        .body(StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)).boxed())
        .unwrap()
}

/// The Status a watch from a compacted version ends with.
fn gone(from: &str, oldest: u64) -> Value {
    json!({ "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": format!("too old resource version: {from} ({oldest})"),
            "reason": "Expired", "code": 410 })
}
