//! command-api end to end over HTTP, against the real PostgreSQL and Redis.

mod audit;
mod contract;
mod fake_runner;
mod hardening;
mod helpers;
mod jobs;
mod mcp;
mod schemathesis;
mod security;
mod workflows;
