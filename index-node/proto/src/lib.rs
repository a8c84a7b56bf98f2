//! The Quiver gRPC API, package `quiver.v1`.
//!
//! * `Query`: the client API served by routers (`Search`, `BatchSearch`).
//! * `Shard`: the API routers use to ask shards to scan lists of one pinned version.
//! * `Admin`: status for the operator (role, versions and their state, list statistics,
//!   `Evaluate` for recall gates).
//!
//! Health is the standard `grpc.health.v1` service (see `tonic-health`), not defined here.

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1 {
    tonic::include_proto!("quiver.v1");
}

pub use v1::*;
