//! The opening handshake (RFC 6455 §4.2): which requests may upgrade, and the answer.

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};

/// Why a request cannot become a WebSocket.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub(crate) status: StatusCode,
    pub(crate) message: &'static str,
}

fn refuse(status: StatusCode, message: &'static str) -> Refusal {
    Refusal { status, message }
}

/// Whether a comma-separated header lists `token` (case-insensitive).
fn lists(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// Checks an upgrade request; the `Sec-WebSocket-Accept` value to answer with.
pub(crate) fn accept(headers: &HeaderMap) -> Result<HeaderValue, Refusal> {
    if !lists(headers, header::CONNECTION, "upgrade")
        || !lists(headers, header::UPGRADE, "websocket")
    {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "bad_request: this endpoint takes WebSocket connections only (send `Connection: \
             Upgrade` and `Upgrade: websocket`)\n",
        ));
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        return Err(refuse(
            StatusCode::UPGRADE_REQUIRED,
            "bad_request: the hub speaks WebSocket version 13 only (`Sec-WebSocket-Version: 13`)\n",
        ));
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "bad_request: the upgrade request has no `Sec-WebSocket-Key`\n",
        ));
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    HeaderValue::from_str(&accept).map_err(|_| {
        refuse(
            StatusCode::BAD_REQUEST,
            "bad_request: invalid `Sec-WebSocket-Key`\n",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn the_rfc_example_key_gets_the_rfc_example_answer() {
        let h = request(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "WebSocket"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ]);
        assert_eq!(accept(&h).expect("valid"), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn requests_that_cannot_upgrade_are_told_why() {
        let no_upgrade = request(&[("sec-websocket-version", "13"), ("sec-websocket-key", "x")]);
        assert_eq!(
            accept(&no_upgrade).expect_err("plain").status,
            StatusCode::BAD_REQUEST
        );
        let old = request(&[
            ("connection", "upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-version", "8"),
            ("sec-websocket-key", "x"),
        ]);
        assert_eq!(
            accept(&old).expect_err("v8").status,
            StatusCode::UPGRADE_REQUIRED
        );
        let keyless = request(&[
            ("connection", "upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-version", "13"),
        ]);
        let r = accept(&keyless).expect_err("no key");
        assert!(r.message.contains("Sec-WebSocket-Key"));
    }
}
