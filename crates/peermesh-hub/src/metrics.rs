//! Counters of the hub, rendered as Prometheus text at `/metrics` and as rates on `/`.
//!
//! Counters are relaxed atomics, bumped once per frame or per fan-out (not per recipient). A
//! sampler task turns them into per-second rates once a second.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use peermesh_proto::ErrorCode;

use crate::services::ServiceStats;

/// Per-second rates computed by the sampler.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Rates {
    /// Inbound frames per second.
    pub frames_in: f64,
    /// Outbound frames per second.
    pub frames_out: f64,
    /// Frames queued to recipients per second (direct + room + control frames).
    pub deliveries: f64,
    /// Direct messages per second.
    pub direct: f64,
    /// Room messages (before fan-out) per second.
    pub room: f64,
}

/// The hub's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    connections_total: AtomicU64,
    frames_in: AtomicU64,
    frames_out: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    direct_messages: AtomicU64,
    room_messages: AtomicU64,
    deliveries: AtomicU64,
    acks: AtomicU64,
    slow_consumers: AtomicU64,
    streams_opened: AtomicU64,
    stream_bytes: AtomicU64,
    /// Stream ends held by connections now (each stream counts once per end).
    streams_live: std::sync::atomic::AtomicI64,
    calls: AtomicU64,
    publications: AtomicU64,
    errors: ErrorCounts,
    rates: Mutex<(Rates, [u64; 5])>,
}

/// One counter per error code (room for every code of [`ErrorCode::ALL`]).
#[derive(Debug)]
struct ErrorCounts([AtomicU64; 64]);

impl Default for ErrorCounts {
    fn default() -> Self {
        Self(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

impl std::ops::Deref for ErrorCounts {
    type Target = [AtomicU64; 64];
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

const _: () = assert!(
    ErrorCode::ALL.len() < 64,
    "ErrorCounts needs room for every code"
);

macro_rules! inc {
    ($($name:ident => $field:ident),*) => {$(
        pub(crate) fn $name(&self, n: u64) {
            self.$field.fetch_add(n, Ordering::Relaxed);
        }
    )*};
}

impl Metrics {
    inc!(inc_frames_in => frames_in, inc_frames_out => frames_out, inc_bytes_in => bytes_in,
         inc_bytes_out => bytes_out, inc_direct => direct_messages, inc_room => room_messages,
         inc_deliveries => deliveries, inc_acks => acks, inc_calls => calls,
         inc_publications => publications);

    pub(crate) fn inc_connections(&self) {
        self.connections_total.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn inc_streams_opened(&self) {
        self.streams_opened.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn inc_stream_bytes(&self, n: u64) {
        self.stream_bytes.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn add_streams(&self, n: i64) {
        self.streams_live.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn sub_streams(&self, n: i64) {
        self.streams_live.fetch_sub(n, Ordering::Relaxed);
    }

    /// Stream ends held by connections now: 0 when no stream is opening, offered or open.
    pub fn stream_ends(&self) -> i64 {
        self.streams_live.load(Ordering::Relaxed)
    }

    /// Stream data bytes forwarded since the start.
    pub fn stream_bytes(&self) -> u64 {
        self.stream_bytes.load(Ordering::Relaxed)
    }

    pub(crate) fn inc_slow_consumers(&self) {
        self.slow_consumers.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn inc_error(&self, code: ErrorCode) {
        let i = ErrorCode::ALL
            .iter()
            .position(|c| *c == code)
            .unwrap_or(self.errors.len() - 1)
            .min(self.errors.len() - 1);
        self.errors[i].fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> [u64; 5] {
        [
            self.frames_in.load(Ordering::Relaxed),
            self.frames_out.load(Ordering::Relaxed),
            self.deliveries.load(Ordering::Relaxed),
            self.direct_messages.load(Ordering::Relaxed),
            self.room_messages.load(Ordering::Relaxed),
        ]
    }

    /// Updates the rates from the counters' change over `elapsed`.
    pub(crate) fn sample(&self, elapsed: Duration) {
        let now = self.snapshot();
        let secs = elapsed.as_secs_f64().max(1e-9);
        let mut guard = self.rates.lock();
        let prev = guard.1;
        let r = |i: usize| now[i].saturating_sub(prev[i]) as f64 / secs;
        guard.0 = Rates {
            frames_in: r(0),
            frames_out: r(1),
            deliveries: r(2),
            direct: r(3),
            room: r(4),
        };
        guard.1 = now;
    }

    /// The latest per-second rates.
    pub fn rates(&self) -> Rates {
        self.rates.lock().0
    }

    /// Prometheus text exposition of every counter, plus the given gauges.
    pub(crate) fn render(&self, clients: usize, rooms: usize, services: ServiceStats) -> String {
        let mut s = String::with_capacity(4096);
        let mut counter = |name: &str, help: &str, v: u64| {
            let _ = writeln!(s, "# HELP peermesh_{name} {help}");
            let _ = writeln!(s, "# TYPE peermesh_{name} counter");
            let _ = writeln!(s, "peermesh_{name} {v}");
        };
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        counter(
            "connections_total",
            "WebSocket connections accepted.",
            load(&self.connections_total),
        );
        counter(
            "frames_in_total",
            "Frames received from clients.",
            load(&self.frames_in),
        );
        counter(
            "frames_out_total",
            "Frames written to clients.",
            load(&self.frames_out),
        );
        counter(
            "bytes_in_total",
            "Payload bytes of frames received.",
            load(&self.bytes_in),
        );
        counter(
            "bytes_out_total",
            "Payload bytes of frames written.",
            load(&self.bytes_out),
        );
        counter(
            "direct_messages_total",
            "Direct emits routed.",
            load(&self.direct_messages),
        );
        counter(
            "room_messages_total",
            "Room emits routed (before fan-out).",
            load(&self.room_messages),
        );
        counter(
            "deliveries_total",
            "Frames queued to recipients.",
            load(&self.deliveries),
        );
        counter(
            "acks_total",
            "Acknowledgement answers routed.",
            load(&self.acks),
        );
        counter(
            "calls_total",
            "Service calls routed to a provider (the hub or a client).",
            load(&self.calls),
        );
        counter(
            "publications_total",
            "Topic publications (before fan-out).",
            load(&self.publications),
        );
        counter(
            "slow_consumers_total",
            "Connections closed as slow consumers.",
            load(&self.slow_consumers),
        );
        counter(
            "streams_opened_total",
            "Streams offered to a target (stream_open that reached a connected client).",
            load(&self.streams_opened),
        );
        counter(
            "stream_bytes_total",
            "Stream data bytes forwarded.",
            load(&self.stream_bytes),
        );
        let _ = writeln!(
            s,
            "# HELP peermesh_errors_total Error frames sent, by code."
        );
        let _ = writeln!(s, "# TYPE peermesh_errors_total counter");
        for (i, code) in ErrorCode::ALL.iter().enumerate() {
            if let Some(c) = self.errors.get(i) {
                let _ = writeln!(s, "peermesh_errors_total{{code=\"{code}\"}} {}", load(c));
            }
        }
        let mut gauge = |name: &str, help: &str, v: f64| {
            let _ = writeln!(s, "# HELP peermesh_{name} {help}");
            let _ = writeln!(s, "# TYPE peermesh_{name} gauge");
            let _ = writeln!(s, "peermesh_{name} {v}");
        };
        gauge("clients", "Clients connected now.", clients as f64);
        gauge("rooms", "Rooms that exist now.", rooms as f64);
        gauge(
            "services",
            "Services with at least one provider now.",
            services.services as f64,
        );
        gauge(
            "service_providers",
            "Client connections that provide a service now.",
            services.client_providers as f64,
        );
        gauge(
            "calls_in_flight",
            "Calls client providers are handling now.",
            services.calls_in_flight as f64,
        );
        gauge(
            "topics",
            "Topics of all services now.",
            services.topics as f64,
        );
        gauge(
            "subscriptions",
            "Subscriptions to all topics now.",
            services.subscriptions as f64,
        );
        gauge(
            "stream_ends",
            "Stream ends held by connections now (two per open stream).",
            self.stream_ends() as f64,
        );
        let r = self.rates();
        gauge(
            "deliveries_per_second",
            "Deliveries per second over the last second.",
            r.deliveries,
        );
        s
    }
}
