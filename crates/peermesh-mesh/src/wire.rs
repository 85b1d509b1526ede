//! Wire formats of the JavaScript peers the mesh interoperates with, one module per format.
//!
//! Each decoder is a sans-IO stream decoder: push the bytes read from a socket, poll events
//! (a frame, or an error with a stable `snake_case` code, a [`Severity`] and a human sentence).

pub mod p2p_node;
pub mod peer_relay;

/// How bad a decoding error event is, for logging and for the caller's policy.
///
/// Ordered from the mildest to the worst, so `severity >= Severity::Warning` works.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Severity {
    /// Nothing was lost; worth a debug or info log line at most.
    Info,
    /// One well-delimited frame was dropped; the stream is still in sync.
    Notice,
    /// Data was lost or corrupted (a frame, or bytes skipped to find the next frame): the peer
    /// misbehaved or the link corrupts data. Log at `warn`.
    Warning,
    /// The peer broke a limit; the decoder carries on, but the caller should disconnect it.
    Error,
}

impl Severity {
    /// The lowercase name: `info`, `notice`, `warning` or `error`.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Notice => "notice",
            Severity::Warning => "warning",
            Severity::Error => "error",
        }
    }
}

impl std::fmt::Display for Severity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
