//! HTTP routes: the WebSocket endpoint, the status page and the metrics.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use peermesh_proto::Encoding;

use crate::conn::{serve_socket, Accept};
use crate::HubInner;

pub(crate) fn routes(hub: Arc<HubInner>) -> Router {
    Router::new()
        .route("/ws", get(upgrade))
        .route("/", get(status_page))
        .route("/status.json", get(status_json))
        .route("/metrics", get(metrics))
        .with_state(hub)
}

/// Sockets allowed in their handshake beyond `max_clients`, so that a refusal can be written.
const HANDSHAKE_SLACK: usize = 1024;

async fn upgrade(
    State(hub): State<Arc<HubInner>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    Query(params): Query<Vec<(String, String)>>,
    mut req: Request,
) -> Response {
    let headers = req.headers();
    let accept_key = match crate::ws::handshake::accept(headers) {
        Ok(k) => k,
        Err(r) => {
            let mut res = (r.status, r.message).into_response();
            if r.status == StatusCode::UPGRADE_REQUIRED {
                res.headers_mut().insert(
                    header::SEC_WEBSOCKET_VERSION,
                    header::HeaderValue::from_static("13"),
                );
            }
            return res;
        }
    };
    if hub.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "server shutting down\n").into_response();
    }
    if hub.tasks.len() >= hub.config.max_clients.saturating_add(HANDSHAKE_SLACK) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "server_full: the hub has reached its connection limit\n",
        )
            .into_response();
    }
    let mut encoding = Encoding::Json;
    let mut bearer = bearer_token(headers);
    let mut meta = Vec::new();
    let mut sessions = Vec::new();
    if let Some(v) = headers
        .get("x-peermesh-session")
        .and_then(|v| v.to_str().ok())
    {
        sessions.push(v.to_owned());
    }
    for (k, v) in params {
        match k.as_str() {
            "enc" => match Encoding::from_param(&v) {
                Some(e) => encoding = e,
                None => {
                    let m = format!("unknown encoding {v:?}: use enc=json or enc=msgpack\n");
                    return (StatusCode::BAD_REQUEST, m).into_response();
                }
            },
            // Browsers cannot set headers on a WebSocket: accept the token as a parameter.
            "token" => bearer = Some(v),
            // A session to join at the handshake (also `x-peermesh-session`).
            "session" => sessions.push(v),
            _ if meta.len() < 64 => meta.push((k, v)),
            _ => {}
        }
    }
    let ip = if hub.config.trust_proxy {
        forwarded_ip(headers).unwrap_or_else(|| addr.ip().to_string())
    } else {
        addr.ip().to_string()
    };
    let accept = Accept {
        addr,
        ip,
        meta,
        encoding,
        bearer,
        sessions,
    };
    let cfg = &hub.config;
    let limits = crate::ws::Limits {
        max_message: cfg.hard_frame_cap(),
        read_chunk: cfg.ws_read_buffer_bytes,
        write_threshold: cfg.ws_write_buffer_bytes,
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let tasks = hub.tasks.clone();
    tasks.spawn(async move {
        match on_upgrade.await {
            Ok(io) => {
                let ws = crate::ws::WebSocket::new(hyper_util::rt::TokioIo::new(io), limits);
                serve_socket(ws, accept, hub).await;
            }
            Err(e) => tracing::debug!(error = %e, "the WebSocket upgrade failed"),
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept_key)
        .body(axum::body::Body::empty())
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

fn bearer_token(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_string())
}

/// The client address a trusted proxy reports: the first `X-Forwarded-For` entry, else the
/// first `for=` of `Forwarded`.
fn forwarded_ip(headers: &HeaderMap) -> Option<String> {
    if let Some(v) = headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        if let Some(first) = v.split(',').map(str::trim).find(|s| !s.is_empty()) {
            return Some(first.to_string());
        }
    }
    let v = headers.get(header::FORWARDED)?.to_str().ok()?;
    v.split([',', ';']).find_map(|part| {
        let (k, val) = part.trim().split_once('=')?;
        if !k.eq_ignore_ascii_case("for") {
            return None;
        }
        let val = val.trim_matches('"');
        let val = val
            .strip_prefix('[')
            .and_then(|s| s.split_once(']').map(|(ip, _)| ip))
            .unwrap_or_else(|| {
                // "1.2.3.4:5678" → "1.2.3.4"; a bare IPv6 has several colons and stays whole.
                match val.matches(':').count() {
                    1 => val.split(':').next().unwrap_or(val),
                    _ => val,
                }
            });
        Some(val.to_string())
    })
}

fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const LIST_LIMIT: usize = 100;

/// A connection's round-trip time in ms (with µs precision), 0 until measured.
fn rtt_ms(c: &crate::registry::ConnShared) -> f64 {
    c.rtt_us.load(Ordering::Relaxed) as f64 / 1000.0
}

async fn status_page(State(hub): State<Arc<HubInner>>) -> Html<String> {
    let reg = hub.registry();
    let r = hub.router.metrics.rates();
    let mut conns = reg.all_conns();
    conns.sort_by(|a, b| a.client.cmp(&b.client));
    let mut s = String::with_capacity(8192);
    let _ = write!(
        s,
        "<!doctype html><html><head><meta charset=utf-8><meta http-equiv=refresh content=2>\
         <title>peermesh hub</title><style>body{{font:14px system-ui;margin:2em}}\
         table{{border-collapse:collapse}}td,th{{padding:2px 10px;border-bottom:1px solid #ddd;\
         text-align:left}}</style></head><body><h1>peermesh hub</h1>\
         <p>listening on {} · up {} s · protocol {}</p>\
         <h2>Now</h2><table><tr><th>clients</th><td>{}</td></tr><tr><th>rooms</th><td>{}</td></tr>\
         <tr><th>frames in/s</th><td>{:.0}</td></tr><tr><th>frames out/s</th><td>{:.0}</td></tr>\
         <tr><th>direct messages/s</th><td>{:.0}</td></tr><tr><th>room messages/s</th><td>{:.0}</td></tr>\
         <tr><th>deliveries/s</th><td>{:.0}</td></tr></table>",
        hub.config.listen,
        hub.started.elapsed().as_secs(),
        peermesh_proto::PROTOCOL_VERSION,
        reg.client_count(),
        reg.room_count(),
        r.frames_in,
        r.frames_out,
        r.direct,
        r.room,
        r.deliveries,
    );
    let _ = write!(
        s,
        "<h2>Clients (first {LIST_LIMIT})</h2><table><tr><th>id</th><th>ip</th><th>enc</th>\
         <th>rooms</th><th>sessions</th><th>frames in</th><th>frames out</th><th>bytes in</th>\
         <th>bytes out</th><th>rtt ms</th><th>queued bytes</th><th>state</th></tr>"
    );
    for c in conns.iter().take(LIST_LIMIT) {
        let st = &c.stats;
        let _ = write!(
            s,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(c.client.as_str()),
            esc(&c.info.ip),
            c.encoding.as_str(),
            c.rooms.lock().len(),
            c.peek().map_or(0, |k| k.sessions.lock().len()),
            st.frames_in.load(Ordering::Relaxed),
            st.frames_out.load(Ordering::Relaxed),
            st.bytes_in.load(Ordering::Relaxed),
            st.bytes_out.load(Ordering::Relaxed),
            rtt_ms(c),
            c.queued_bytes(),
            if c.away.load(Ordering::Relaxed) {
                "away"
            } else {
                "connected"
            },
        );
    }
    let _ = write!(
        s,
        "</table><h2>Rooms (largest {LIST_LIMIT})</h2><table><tr><th>room</th><th>members</th></tr>"
    );
    for (room, n) in reg.room_sizes(LIST_LIMIT) {
        let _ = write!(s, "<tr><td>{}</td><td>{n}</td></tr>", esc(room.as_str()));
    }
    let _ = write!(
        s,
        "</table><h2>Sessions (largest {LIST_LIMIT})</h2><table><tr><th>session</th>\
         <th>members</th><th>objects</th><th>revision</th></tr>"
    );
    for (name, members, objects, rev) in hub.router.sessions.rows(LIST_LIMIT) {
        let _ = write!(
            s,
            "<tr><td>{}</td><td>{members}</td><td>{objects}</td><td>{rev}</td></tr>",
            esc(name.as_str())
        );
    }
    let _ = write!(
        s,
        "</table><h2>Services (first {LIST_LIMIT})</h2><table><tr><th>service</th>\
         <th>hub provides</th><th>client providers</th><th>calls in flight</th><th>topics</th>\
         <th>subscriptions</th></tr>"
    );
    for row in hub.router.services.rows(LIST_LIMIT) {
        let _ = write!(
            s,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(row.name.as_str()),
            if row.hub { "yes" } else { "no" },
            row.providers,
            row.calls_in_flight,
            row.topics,
            row.subscriptions,
        );
    }
    if let Some(bp) = &hub.router.cluster {
        let c = &bp.counters;
        let _ = write!(
            s,
            "</table><h2>Cluster: this hub is {}</h2><p>to other hubs {} messages ({} B) · from \
             other hubs {} ({} B) · dropped {}</p><table><tr><th>hub</th><th>clients</th>\
             <th>last heard</th></tr>",
            esc(bp.node()),
            c.sent.load(Ordering::Relaxed),
            c.sent_bytes.load(Ordering::Relaxed),
            c.received.load(Ordering::Relaxed),
            c.received_bytes.load(Ordering::Relaxed),
            c.dropped.load(Ordering::Relaxed),
        );
        for m in bp.cluster().members() {
            let _ = write!(
                s,
                "<tr><td>{}{}</td><td>{}</td><td>{} ms ago</td></tr>",
                esc(&m.name),
                if m.local { " (this hub)" } else { "" },
                m.clients,
                m.silent_for.as_millis()
            );
        }
    }
    s.push_str("</table><p><a href=/metrics>/metrics</a> · <a href=/status.json>/status.json</a></p></body></html>");
    Html(s)
}

async fn status_json(State(hub): State<Arc<HubInner>>) -> Response {
    let reg = hub.registry();
    let r = hub.router.metrics.rates();
    let mut conns = reg.all_conns();
    conns.sort_by(|a, b| a.client.cmp(&b.client));
    let clients: Vec<_> = conns
        .iter()
        .take(LIST_LIMIT)
        .map(|c| {
            let st = &c.stats;
            serde_json::json!({
                "id": c.client,
                "ip": c.info.ip,
                "addr": c.info.addr.to_string(),
                "connected_s": c.info.connected_at.elapsed().map(|d| d.as_secs()).unwrap_or(0),
                "enc": c.encoding.as_str(),
                "version": c.info.version,
                "meta": c.info.meta.iter().map(|(k, v)| serde_json::json!([k, v])).collect::<Vec<_>>(),
                "rooms": c.rooms.lock().len(),
                "frames_in": st.frames_in.load(Ordering::Relaxed),
                "frames_out": st.frames_out.load(Ordering::Relaxed),
                "bytes_in": st.bytes_in.load(Ordering::Relaxed),
                "bytes_out": st.bytes_out.load(Ordering::Relaxed),
                "queued_bytes": c.queued_bytes(),
                "queued_stream_bytes": c.mailbox.stream_held().1,
                "sessions": c.peek().map_or(0, |k| k.sessions.lock().len()),
                "rtt_ms": rtt_ms(c),
                "away": c.away.load(Ordering::Relaxed),
            })
        })
        .collect();
    let rooms: Vec<_> = reg
        .room_sizes(LIST_LIMIT)
        .into_iter()
        .map(|(room, n)| serde_json::json!({"room": room, "members": n}))
        .collect();
    let body = serde_json::json!({
        "uptime_s": hub.started.elapsed().as_secs(),
        "clients": reg.client_count(),
        "rooms": reg.room_count(),
        "rates": {
            "frames_in": r.frames_in, "frames_out": r.frames_out, "deliveries": r.deliveries,
            "direct": r.direct, "room": r.room,
        },
        "cluster": cluster_json(&hub),
        "client_list": clients,
        "room_list": rooms,
        "service_list": hub.router.services.rows(LIST_LIMIT),
        "session_list": hub.router.sessions.rows(LIST_LIMIT).into_iter()
            .map(|(name, members, objects, rev)| serde_json::json!({
                "session": name, "members": members, "objects": objects, "rev": rev,
            }))
            .collect::<Vec<_>>(),
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// The cluster part of `/status.json` (null for a single hub).
fn cluster_json(hub: &HubInner) -> serde_json::Value {
    let Some(bp) = &hub.router.cluster else {
        return serde_json::Value::Null;
    };
    let c = &bp.counters;
    let nodes: Vec<_> = bp
        .cluster()
        .members()
        .into_iter()
        .map(|m| {
            serde_json::json!({
                "node": m.name, "clients": m.clients, "local": m.local,
                "silent_ms": m.silent_for.as_millis() as u64,
                "services": m.services,
            })
        })
        .collect();
    serde_json::json!({
        "node": bp.node(),
        "connected": bp.cluster().connected(),
        "nodes": nodes,
        "sent": c.sent.load(Ordering::Relaxed),
        "sent_bytes": c.sent_bytes.load(Ordering::Relaxed),
        "received": c.received.load(Ordering::Relaxed),
        "received_bytes": c.received_bytes.load(Ordering::Relaxed),
        "dropped": c.dropped.load(Ordering::Relaxed),
        "batches": c.batches.load(Ordering::Relaxed),
        "batched_messages": c.batched.load(Ordering::Relaxed),
        "malformed": c.malformed.load(Ordering::Relaxed),
        "registry_errors": c.registry_errors.load(Ordering::Relaxed),
        "room_emits_replayed": c.room_replayed.load(Ordering::Relaxed),
        "room_emits_skipped": c.room_skipped.load(Ordering::Relaxed),
        "topic_messages_replayed": c.topic_replayed.load(Ordering::Relaxed),
        "topic_messages_skipped": c.topic_skipped.load(Ordering::Relaxed),
        "sessions_elsewhere": bp.sessions_elsewhere().0,
        "sessions_mirrored": bp.sessions_elsewhere().1,
        "sessions_taken_over": c.sessions_taken_over.load(Ordering::Relaxed),
        "sessions_followed": c.sessions_followed.load(Ordering::Relaxed),
        "sessions_handed_over": c.sessions_handed_over.load(Ordering::Relaxed),
        "ids_released_for_dead_nodes": bp.cluster().released(),
    })
}

/// The cluster's Prometheus series.
fn cluster_metrics(text: &mut String, bp: &crate::cluster::Backplane) {
    let members = bp.cluster().members();
    let _ = writeln!(
        text,
        "# HELP peermesh_cluster_nodes Live hubs of the cluster, this one included."
    );
    let _ = writeln!(text, "# TYPE peermesh_cluster_nodes gauge");
    let _ = writeln!(text, "peermesh_cluster_nodes {}", members.len());
    let (elsewhere, mirrored) = bp.sessions_elsewhere();
    let _ = writeln!(
        text,
        "# HELP peermesh_cluster_sessions_elsewhere Sessions held by other hubs with members here."
    );
    let _ = writeln!(text, "# TYPE peermesh_cluster_sessions_elsewhere gauge");
    let _ = writeln!(text, "peermesh_cluster_sessions_elsewhere {elsewhere}");
    let _ = writeln!(
        text,
        "# HELP peermesh_cluster_sessions_mirrored Of those, the ones this hub mirrors whole (it can take them over if their home leaves)."
    );
    let _ = writeln!(text, "# TYPE peermesh_cluster_sessions_mirrored gauge");
    let _ = writeln!(text, "peermesh_cluster_sessions_mirrored {mirrored}");
    let _ = writeln!(
        text,
        "# HELP peermesh_cluster_node_clients Clients of each hub, from its last heartbeat."
    );
    let _ = writeln!(text, "# TYPE peermesh_cluster_node_clients gauge");
    for m in &members {
        let _ = writeln!(
            text,
            "peermesh_cluster_node_clients{{node=\"{}\"}} {}",
            m.name, m.clients
        );
    }
    let c = &bp.counters;
    for (name, help, v) in [
        (
            "cluster_sent_total",
            "Messages published to other hubs.",
            c.sent.load(Ordering::Relaxed),
        ),
        (
            "cluster_sent_bytes_total",
            "Bytes published to other hubs.",
            c.sent_bytes.load(Ordering::Relaxed),
        ),
        (
            "cluster_received_total",
            "Messages received from other hubs.",
            c.received.load(Ordering::Relaxed),
        ),
        (
            "cluster_received_bytes_total",
            "Bytes received from other hubs.",
            c.received_bytes.load(Ordering::Relaxed),
        ),
        (
            "cluster_dropped_total",
            "Messages not published (queue to NATS full, or NATS refused them).",
            c.dropped.load(Ordering::Relaxed),
        ),
        (
            "cluster_batches_total",
            "Published messages that were batches of several for one hub (a busy session's events; counted in cluster_sent_total).",
            c.batches.load(Ordering::Relaxed),
        ),
        (
            "cluster_batched_messages_total",
            "Messages to other hubs that left in those batches.",
            c.batched.load(Ordering::Relaxed),
        ),
        (
            "cluster_malformed_total",
            "Messages from other hubs that could not be read.",
            c.malformed.load(Ordering::Relaxed),
        ),
        (
            "cluster_registry_errors_total",
            "Key-value operations of the cluster registry that failed.",
            c.registry_errors.load(Ordering::Relaxed),
        ),
        (
            "cluster_room_emits_replayed_total",
            "Room emits replayed to sessions that moved here (missed between the two hubs).",
            c.room_replayed.load(Ordering::Relaxed),
        ),
        (
            "cluster_room_emits_skipped_total",
            "Room emits not delivered again to sessions that moved here (the old hub had).",
            c.room_skipped.load(Ordering::Relaxed),
        ),
        (
            "cluster_topic_messages_replayed_total",
            "Topic publications and ends replayed to sessions that moved here.",
            c.topic_replayed.load(Ordering::Relaxed),
        ),
        (
            "cluster_topic_messages_skipped_total",
            "Topic publications and ends not delivered again to sessions that moved here.",
            c.topic_skipped.load(Ordering::Relaxed),
        ),
        (
            "cluster_sessions_taken_over_total",
            "Shared-state sessions this hub took over from its mirror when their home hub left.",
            c.sessions_taken_over.load(Ordering::Relaxed),
        ),
        (
            "cluster_sessions_followed_total",
            "Shared-state sessions another hub took over that this hub's members followed.",
            c.sessions_followed.load(Ordering::Relaxed),
        ),
        (
            "cluster_sessions_handed_over_total",
            "Shared-state sessions held here that another hub took over while this hub was cut off.",
            c.sessions_handed_over.load(Ordering::Relaxed),
        ),
        (
            "cluster_ids_released_total",
            "Ids of dead hubs this hub released.",
            bp.cluster().released(),
        ),
    ] {
        let _ = writeln!(text, "# HELP peermesh_{name} {help}");
        let _ = writeln!(text, "# TYPE peermesh_{name} counter");
        let _ = writeln!(text, "peermesh_{name} {v}");
    }
}

async fn metrics(State(hub): State<Arc<HubInner>>) -> Response {
    let reg = hub.registry();
    let mut text = hub.router.metrics.render(
        reg.client_count(),
        reg.room_count(),
        hub.router.services.stats(),
    );
    let st = hub.router.sessions.stats();
    for (name, help, v) in [
        ("sessions", "Sessions that exist now.", st.sessions),
        (
            "session_members",
            "Members of all sessions now.",
            st.members,
        ),
        (
            "session_objects",
            "Shared objects of all sessions now.",
            st.objects,
        ),
    ] {
        let _ = writeln!(text, "# HELP peermesh_{name} {help}");
        let _ = writeln!(text, "# TYPE peermesh_{name} gauge");
        let _ = writeln!(text, "peermesh_{name} {v}");
    }
    if let Some(bp) = &hub.router.cluster {
        cluster_metrics(&mut text, bp);
    }
    // Per-connection figures, for the first LIST_LIMIT clients by id (bounded cardinality).
    let mut conns = reg.all_conns();
    conns.sort_by(|a, b| a.client.cmp(&b.client));
    conns.truncate(LIST_LIMIT);
    type Figure = fn(&crate::registry::ConnShared) -> f64;
    let per_conn: [(&str, &str, Figure); 5] = [
        (
            "connection_frames_in",
            "Frames received from the client.",
            |c| c.stats.frames_in.load(Ordering::Relaxed) as f64,
        ),
        ("connection_frames_out", "Frames sent to the client.", |c| {
            c.stats.frames_out.load(Ordering::Relaxed) as f64
        }),
        (
            "connection_bytes_in",
            "Bytes received from the client.",
            |c| c.stats.bytes_in.load(Ordering::Relaxed) as f64,
        ),
        ("connection_bytes_out", "Bytes sent to the client.", |c| {
            c.stats.bytes_out.load(Ordering::Relaxed) as f64
        }),
        (
            "connection_rtt_ms",
            "Round-trip time to the client (0 until measured).",
            rtt_ms,
        ),
    ];
    for (name, help, get) in per_conn {
        let _ = writeln!(
            text,
            "# HELP peermesh_{name} {help} First {LIST_LIMIT} clients by id."
        );
        let _ = writeln!(text, "# TYPE peermesh_{name} gauge");
        for c in &conns {
            let id = c.client.as_str().replace('\\', "\\\\").replace('"', "\\\"");
            let _ = writeln!(text, "peermesh_{name}{{id=\"{id}\"}} {}", get(c));
        }
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_headers() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "203.0.113.7, 10.0.0.1".parse().unwrap());
        assert_eq!(forwarded_ip(&h).as_deref(), Some("203.0.113.7"));
        let mut h = HeaderMap::new();
        h.insert(
            header::FORWARDED,
            "for=\"[2001:db8::1]:4711\";proto=https".parse().unwrap(),
        );
        assert_eq!(forwarded_ip(&h).as_deref(), Some("2001:db8::1"));
        let mut h = HeaderMap::new();
        h.insert(
            header::FORWARDED,
            "proto=http;for=192.0.2.60:8080".parse().unwrap(),
        );
        assert_eq!(forwarded_ip(&h).as_deref(), Some("192.0.2.60"));
    }

    #[test]
    fn escapes_html() {
        assert_eq!(esc("<a href='x'>&"), "&lt;a href=&#39;x&#39;&gt;&amp;");
    }
}
