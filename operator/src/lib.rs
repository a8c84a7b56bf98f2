//! `quiver-operator`: reconciles `VectorIndex` resources into serving index clusters.
//!
//! Reconcile is a pipeline (see [`controller`]): observe ([`observe`]) → validate
//! (`quiver_api::validate`) → plan ([`children`], [`jobs`], [`lifecycle`], [`capacity`],
//! [`conditions`], [`deletion`], [`hotspots`], [`rebalance`], all pure and unit-tested without a client) → apply ([`apply`]) → status.

pub mod apply;
pub mod capacity;
pub mod children;
pub mod conditions;
pub mod controller;
pub mod deletion;
pub mod drift;
pub mod hotreplicas;
pub mod hotspots;
pub mod jobs;
pub mod lifecycle;
pub mod listload;
pub mod metrics;
pub mod observe;
pub mod rebalance;
pub mod spec_hash;
