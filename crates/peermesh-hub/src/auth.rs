//! Token authentication: JWTs signed with HS256 (shared secret) or RS256/EdDSA (public key).
//!
//! A token's `sub` is the client id it may use; an optional `rooms` claim lists the rooms it
//! may join (exact names, or prefixes ending in `*`). `exp` is required.

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use peermesh_proto::{ClientId, RoomName};
use serde::Deserialize;

use crate::config::AuthConfig;
use crate::error::ConfigError;

#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    rooms: Option<Vec<String>>,
}

/// What a verified token allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Grant {
    /// The client id the token was issued to.
    pub(crate) sub: ClientId,
    rooms: Option<Vec<String>>,
}

impl Grant {
    /// Whether the token allows joining `room`.
    pub(crate) fn may_join(&self, room: &RoomName) -> bool {
        match &self.rooms {
            None => true,
            Some(patterns) => patterns.iter().any(|p| match p.strip_suffix('*') {
                Some(prefix) => room.as_str().starts_with(prefix),
                None => p == room.as_str(),
            }),
        }
    }
}

/// Verifies client tokens.
pub(crate) struct Authenticator {
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("algorithms", &self.validation.algorithms)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// Builds the verifier from the config; `None` when authentication is off.
    pub(crate) fn from_config(cfg: &AuthConfig) -> Result<Option<Self>, ConfigError> {
        Ok(Self::key_from_config(cfg)?.map(|mut a| {
            match &cfg.jwt_audience {
                Some(aud) => a.validation.set_audience(&[aud]),
                None => a.validation.validate_aud = false,
            }
            if let Some(iss) = &cfg.jwt_issuer {
                a.validation.set_issuer(&[iss]);
            }
            a
        }))
    }

    fn key_from_config(cfg: &AuthConfig) -> Result<Option<Self>, ConfigError> {
        if let Some(secret) = &cfg.jwt_secret {
            if secret.is_empty() {
                return Err(ConfigError::Invalid {
                    key: "auth.jwt_secret",
                    reason: "must not be empty".into(),
                });
            }
            return Ok(Some(Self {
                key: DecodingKey::from_secret(secret.as_bytes()),
                validation: Validation::new(Algorithm::HS256),
            }));
        }
        let Some(path) = &cfg.jwt_public_key else {
            return Ok(None);
        };
        let err = |reason: String| ConfigError::AuthKey {
            path: path.display().to_string(),
            reason,
        };
        let pem = std::fs::read(path).map_err(|e| err(e.to_string()))?;
        if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
            let mut validation = Validation::new(Algorithm::RS256);
            validation.algorithms = vec![
                Algorithm::RS256,
                Algorithm::RS384,
                Algorithm::RS512,
                Algorithm::PS256,
                Algorithm::PS384,
                Algorithm::PS512,
            ];
            return Ok(Some(Self { key, validation }));
        }
        let key = DecodingKey::from_ed_pem(&pem).map_err(|e| {
            err(format!(
                "it is neither an RSA nor an Ed25519 public key in PEM form ({e})"
            ))
        })?;
        Ok(Some(Self {
            key,
            validation: Validation::new(Algorithm::EdDSA),
        }))
    }

    /// Verifies a token, returning what it grants or a sentence saying why not.
    pub(crate) fn verify(&self, token: &str) -> Result<Grant, String> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|e| format!("the token was refused: {e}"))?;
        let sub = ClientId::new(&data.claims.sub)
            .map_err(|e| format!("the token's `sub` is not a valid client id: {e}"))?;
        Ok(Grant {
            sub,
            rooms: data.claims.rooms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(s: &str) -> RoomName {
        RoomName::new(s).unwrap()
    }

    #[test]
    fn room_patterns() {
        let g = Grant {
            sub: ClientId::new("a").unwrap(),
            rooms: Some(vec!["lobby".into(), "team-*".into()]),
        };
        assert!(g.may_join(&room("lobby")));
        assert!(g.may_join(&room("team-red")));
        assert!(!g.may_join(&room("lobby2")));
        assert!(!g.may_join(&room("admin")));
    }

    #[test]
    fn hs256_roundtrip_and_expiry() {
        let cfg = AuthConfig {
            jwt_secret: Some("s3cret".into()),
            ..Default::default()
        };
        let auth = Authenticator::from_config(&cfg).unwrap().unwrap();
        let now = jsonwebtoken::get_current_timestamp();
        let sign = |exp: u64| {
            jsonwebtoken::encode(
                &jsonwebtoken::Header::default(),
                &serde_json::json!({"sub":"alice","exp":exp}),
                &jsonwebtoken::EncodingKey::from_secret(b"s3cret"),
            )
            .unwrap()
        };
        assert_eq!(auth.verify(&sign(now + 60)).unwrap().sub.as_str(), "alice");
        assert!(auth
            .verify(&sign(now - 3600))
            .unwrap_err()
            .contains("refused"));
        assert!(auth.verify("garbage").is_err());
        // A token naming an audience passes when none is configured, and must match when one is.
        let with_aud = jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &serde_json::json!({"sub":"bob","exp":now + 60,"aud":"chat"}),
            &jsonwebtoken::EncodingKey::from_secret(b"s3cret"),
        )
        .unwrap();
        assert!(auth.verify(&with_aud).is_ok());
        let strict = Authenticator::from_config(&AuthConfig {
            jwt_audience: Some("game".into()),
            ..cfg
        })
        .unwrap()
        .unwrap();
        assert!(strict.verify(&with_aud).is_err());
    }
}
