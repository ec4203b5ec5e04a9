//! # glassbox-platform — what every Glassbox service shares
//!
//! Configuration ([`config`]), JSON logs ([`telemetry`]), JWT identities
//! ([`auth`]), RFC 9457 problem+json errors with stable codes ([`problem`]) and
//! health endpoints ([`health`]). Services stay thin: they parse requests into
//! their core's commands and use these pieces for everything around that.

pub mod auth;
pub mod blob;
pub mod config;
pub mod health;
pub mod hot;
pub mod problem;
pub mod runner_token;
pub mod telemetry;

pub use auth::{AuthError, Identity, JwtVerifier};
pub use config::{Config, ConfigError, Environment};
pub use problem::Problem;

/// rustls is compiled with more than one crypto provider in this dependency set;
/// every binary and test harness installs ring's explicitly, once.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
