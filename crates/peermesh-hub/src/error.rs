//! Errors of the hub library.

use std::net::SocketAddr;

/// A configuration value is wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A key holds a value the hub cannot use.
    #[error("config key `{key}`: {reason}")]
    Invalid {
        /// The key.
        key: &'static str,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// The TOML file could not be parsed (the message names the line and key).
    #[error("config file: {0}")]
    Toml(String),
    /// Listening beyond loopback without authentication.
    #[error(
        "refusing to listen on {0} without authentication: anyone who can reach it could \
         impersonate any client. Configure --auth-jwt-secret or --auth-jwt-public-key, listen on \
         127.0.0.1, or pass --insecure if that is really what you want"
    )]
    InsecureListen(SocketAddr),
    /// The JWT public key could not be loaded.
    #[error("cannot load the JWT public key {path}: {reason}")]
    AuthKey {
        /// The key file.
        path: String,
        /// Why.
        reason: String,
    },
}

/// Starting or running the hub failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HubError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source} (is another process using the port? try --listen 127.0.0.1:0)")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// Joining the cluster failed (the message names the fix).
    #[error("cluster: {0}")]
    Cluster(#[from] peermesh_cluster::ClusterError),
    /// The HTTP server failed.
    #[error("the HTTP server failed: {0}")]
    Serve(std::io::Error),
}
