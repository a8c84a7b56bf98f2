//! Container ports of index-node pods: names (what Services, probes and ServiceMonitors refer
//! to) and numbers (`index-node serve`'s `--grpc-port` and `--http-port` defaults).
//!
//! A node serves all its gRPC services on one port: a router `quiver.v1.Query`, a shard
//! `quiver.v1.Shard`, both `quiver.v1.Admin` and `grpc.health.v1.Health`. The port is named
//! after what the role offers; the number is the same. A second, HTTP port serves `/healthz`,
//! `/readyz` and `/metrics`.

/// gRPC port number of every node (`--grpc-port` default).
pub const GRPC: u16 = 7000;

/// Name of a router's gRPC port: the client Service's port (`quiver.v1.Query`).
pub const QUERY_NAME: &str = "query";
/// A router's gRPC port number.
pub const QUERY: u16 = GRPC;

/// Name of a shard's gRPC port (`quiver.v1.Shard`, called by routers).
pub const SHARD_NAME: &str = "shard";
/// A shard's gRPC port number.
pub const SHARD: u16 = GRPC;

/// The operator's Admin calls (`Status`, `Evaluate`, `ListStats`) and gRPC health probes go to
/// the role's gRPC port: there is no separate admin port.
pub const ADMIN: u16 = GRPC;

/// Name of the HTTP port: `/metrics` (Prometheus), `/healthz` (liveness), `/readyz`
/// (readiness: 503 while loading or shutting down).
pub const METRICS_NAME: &str = "metrics";
/// HTTP port number of every node (`--http-port` default).
pub const METRICS: u16 = 7001;

/// HTTP path of the liveness probe.
pub const LIVENESS_PATH: &str = "/healthz";
/// HTTP path of the readiness probe.
pub const READINESS_PATH: &str = "/readyz";
/// HTTP path of the Prometheus metrics.
pub const METRICS_PATH: &str = "/metrics";

#[cfg(test)]
mod tests {
    #[test]
    fn port_names_are_iana_service_names() {
        // Kubernetes port names: at most 15 characters, lower-case letters, digits and '-',
        // at least one letter.
        for n in [super::QUERY_NAME, super::SHARD_NAME, super::METRICS_NAME] {
            assert!(n.len() <= 15 && crate::names::is_dns1123_label(n), "{n}");
        }
    }
}
