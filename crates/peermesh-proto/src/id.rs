//! Validated names: client ids, room names and event names.
//!
//! Each is parsed once at the edge (parse, don't validate) and then cloned cheaply: the text
//! lives in an `Arc<str>`.

use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {value:?} is invalid: {reason}")]
pub struct NameError {
    /// What kind of name it was ("client id", "room name", "event name").
    pub kind: &'static str,
    /// The rejected value, shortened to 64 characters.
    pub value: String,
    /// The rule it broke.
    pub reason: &'static str,
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $max:expr, $check:expr, $rule:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl $name {
            /// The longest accepted value, in bytes.
            pub const MAX_LEN: usize = $max;

            /// Parse and validate a name.
            pub fn new(value: &str) -> Result<Self, NameError> {
                let err = |reason| NameError {
                    kind: $kind,
                    value: value.chars().take(64).collect(),
                    reason,
                };
                if value.is_empty() {
                    return Err(err("it is empty"));
                }
                if value.len() > Self::MAX_LEN {
                    return Err(err(concat!("it is longer than ", stringify!($max), " bytes")));
                }
                let check: fn(char) -> bool = $check;
                if !value.chars().all(check) {
                    return Err(err($rule));
                }
                Ok(Self(Arc::from(value)))
            }

            /// The name as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::str::FromStr for $name {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, NameError> {
                Self::new(s)
            }
        }

        impl TryFrom<&str> for $name {
            type Error = NameError;
            fn try_from(s: &str) -> Result<Self, NameError> {
                Self::new(s)
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str> as serde::Deserialize>::deserialize(d)?;
                Self::new(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

fn id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '@' | '+' | '=')
}

fn text_char(c: char) -> bool {
    !c.is_control()
}

name_type!(
    /// A client id: 1 to 128 bytes of ASCII letters, digits and `-_.:@+=`.
    ClientId, "client id", 128, id_char,
    "only ASCII letters, digits and - _ . : @ + = are allowed"
);
name_type!(
    /// A room name: 1 to 256 bytes of any text without control characters.
    RoomName, "room name", 256, text_char, "control characters are not allowed"
);
name_type!(
    /// An event name: 1 to 128 bytes of any text without control characters.
    EventName, "event name", 128, text_char, "control characters are not allowed"
);

name_type!(
    /// A service name: 1 to 128 bytes of ASCII letters, digits and `-_.:@+=` (like a client id).
    ServiceName, "service name", 128, id_char,
    "only ASCII letters, digits and - _ . : @ + = are allowed"
);
name_type!(
    /// A method name of a service: 1 to 128 bytes of ASCII letters, digits and `-_.:@+=`.
    MethodName, "method name", 128, id_char,
    "only ASCII letters, digits and - _ . : @ + = are allowed"
);
name_type!(
    /// A topic name, unique within its service: 1 to 256 bytes of any text without control
    /// characters.
    TopicName, "topic name", 256, text_char, "control characters are not allowed"
);

name_type!(
    /// A session id: 1 to 128 bytes of ASCII letters, digits and `-_.:@+=` (like a client id).
    SessionName, "session id", 128, id_char,
    "only ASCII letters, digits and - _ . : @ + = are allowed"
);
name_type!(
    /// The id of a shared object in a session: 1 to 128 bytes of any text without control
    /// characters.
    ObjectName, "object id", 128, text_char, "control characters are not allowed"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids() {
        assert!(ClientId::new("alice").is_ok());
        assert!(ClientId::new("3f2a-uuid_like.x:y@z+w=").is_ok());
        assert!(ClientId::new("").is_err());
        assert!(ClientId::new("has space").is_err());
        assert!(ClientId::new(&"a".repeat(129)).is_err());
        assert!(ClientId::new(&"a".repeat(128)).is_ok());
        let e = ClientId::new("bad/id").unwrap_err();
        assert!(e.to_string().contains("client id"), "{e}");
    }

    #[test]
    fn service_names() {
        assert!(ServiceName::new("time").is_ok());
        assert!(ServiceName::new("a b").is_err());
        assert!(MethodName::new("now").is_ok());
        assert!(MethodName::new("").is_err());
        assert!(TopicName::new("ticks · 1s").is_ok());
        assert!(TopicName::new("a\tb").is_err());
    }

    #[test]
    fn rooms_and_events() {
        assert!(RoomName::new("lobby · 🎮").is_ok());
        assert!(RoomName::new("a\nb").is_err());
        assert!(EventName::new("chat").is_ok());
        assert!(EventName::new(&"e".repeat(129)).is_err());
    }
}
