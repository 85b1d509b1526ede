//! Message payloads: any JSON value, or raw bytes.
//!
//! On the wire a payload is one of two fields of the frame: `data` holds a JSON value (a
//! MessagePack value of the same shape in binary frames), `bin` holds raw bytes (MessagePack
//! `bin`, or a standard base64 string in JSON frames). A frame with neither carries `null`.

use base64::Engine as _;
use bytes::Bytes;
use serde_json::Value;

/// The body of a message, an acknowledgement or a reply.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    /// Any JSON value (wire field `data`).
    Json(Value),
    /// Raw bytes (wire field `bin`).
    Bin(Bytes),
}

impl Default for Payload {
    fn default() -> Self {
        Payload::Json(Value::Null)
    }
}

impl Payload {
    /// A JSON `null` payload.
    pub const NULL: Payload = Payload::Json(Value::Null);

    /// The payload's JSON value, if it is one.
    pub fn as_json(&self) -> Option<&Value> {
        match self {
            Payload::Json(v) => Some(v),
            Payload::Bin(_) => None,
        }
    }

    /// The payload's bytes, if it is binary.
    pub fn as_bytes(&self) -> Option<&Bytes> {
        match self {
            Payload::Bin(b) => Some(b),
            Payload::Json(_) => None,
        }
    }

    pub(crate) fn from_fields(
        data: Option<Value>,
        bin: Option<BinField>,
    ) -> Result<Self, &'static str> {
        match (data, bin) {
            (Some(_), Some(_)) => Err("a frame carries either `data` or `bin`, not both"),
            (None, Some(b)) => Ok(Payload::Bin(b.0)),
            (Some(v), None) => Ok(Payload::Json(v)),
            (None, None) => Ok(Payload::NULL),
        }
    }

    /// Number of entries the payload adds to an encoded map (0 for a JSON null).
    pub(crate) fn entries(&self) -> usize {
        match self {
            Payload::Json(Value::Null) => 0,
            _ => 1,
        }
    }

    pub(crate) fn serialize_entry<M: serde::ser::SerializeMap>(
        &self,
        map: &mut M,
    ) -> Result<(), M::Error> {
        match self {
            Payload::Json(Value::Null) => Ok(()),
            Payload::Json(v) => map.serialize_entry("data", v),
            Payload::Bin(b) => map.serialize_entry("bin", &BinRef(b)),
        }
    }
}

impl From<Value> for Payload {
    fn from(v: Value) -> Self {
        Payload::Json(v)
    }
}

impl From<Bytes> for Payload {
    fn from(b: Bytes) -> Self {
        Payload::Bin(b)
    }
}

impl From<Vec<u8>> for Payload {
    fn from(b: Vec<u8>) -> Self {
        Payload::Bin(Bytes::from(b))
    }
}

/// Serializes bytes as MessagePack `bin`, or as base64 text in human-readable formats.
pub(crate) struct BinRef<'a>(pub(crate) &'a Bytes);

impl serde::Serialize for BinRef<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(self.0))
        } else {
            s.serialize_bytes(self.0)
        }
    }
}

/// Deserializes a `bin` field: MessagePack `bin` or base64 text.
#[derive(Debug)]
pub(crate) struct BinField(pub(crate) Bytes);

impl<'de> serde::Deserialize<'de> for BinField {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = BinField;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes (MessagePack bin) or a base64 string")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<BinField, E> {
                Ok(BinField(Bytes::copy_from_slice(v)))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<BinField, E> {
                Ok(BinField(Bytes::from(v)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<BinField, E> {
                base64::engine::general_purpose::STANDARD
                    .decode(v)
                    .map(|b| BinField(Bytes::from(b)))
                    .map_err(|e| E::custom(format_args!("`bin` is not valid base64: {e}")))
            }
        }
        d.deserialize_any(V)
    }
}
