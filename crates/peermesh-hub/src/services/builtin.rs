//! The built-in `time` service, provided by the hub when `builtin_time_service` is set.
//!
//! | method | arguments | result |
//! |---|---|---|
//! | `now` | ignored | `{"unix_ms": <milliseconds since the Unix epoch>}` |
//! | `echo` | anything | the arguments, unchanged |
//!
//! It exists as an example of [`ServiceSpec`] and for trying services without writing a
//! provider (`peermesh connect` can call it).

use std::time::{SystemTime, UNIX_EPOCH};

use peermesh_proto::Payload;

use super::api::{ServiceError, ServiceSpec};

/// The name of the built-in service.
pub(crate) const TIME_SERVICE: &str = "time";

/// The built-in `time` service.
pub(crate) fn time_service() -> Result<ServiceSpec, peermesh_proto::NameError> {
    ServiceSpec::new(TIME_SERVICE)?
        .method("now", |_| async {
            let ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_err(|e| ServiceError::new(format!("the system clock is before 1970: {e}")))?
                .as_millis();
            let ms = u64::try_from(ms).unwrap_or(u64::MAX);
            Ok(Payload::Json(serde_json::json!({ "unix_ms": ms })))
        })?
        .method("echo", |call| async move { Ok(call.payload) })
}
