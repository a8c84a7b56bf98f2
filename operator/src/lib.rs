//! `quiver-operator`: reconciles `VectorIndex` resources into serving index clusters.
//!
//! Built so far (the pure steps, unit-tested without a client):
//! * [`children`]: the serving children an index should have (shard StatefulSets, headless
//!   Services and PodDisruptionBudgets, the router Deployment, the query Service, the node
//!   pods' read-only RBAC).
//!
//! Not built yet: the controller (observe → validate → plan → apply → status), the version
//! lifecycle and its Jobs, leader election, the binary.

pub mod children;
