//! Environment variables an index-node pod reads. The operator sets them in every pod template
//! it makes; `index-node` reads them as the defaults of the matching flags.

/// Name of the `VectorIndex` (`--index`), which is also its directory in storage.
pub const INDEX: &str = "QUIVER_INDEX";
/// Namespace of the `VectorIndex` (`--namespace`; from the downward API `metadata.namespace`),
/// also a directory in storage.
pub const NAMESPACE: &str = "QUIVER_NAMESPACE";
/// Name of the pod (from the downward API `metadata.name`): the node name it reports in its
/// Admin `Status` and logs (`--node-name`).
pub const POD_NAME: &str = "QUIVER_POD_NAME";
/// The pod's IP (from the downward API `status.podIP`): the address to listen on
/// (`--listen-ip`).
pub const LISTEN_IP: &str = "QUIVER_LISTEN_IP";
/// Shard number of a shard pod (`--shard`), decimal.
pub const SHARD: &str = "QUIVER_SHARD";
/// Storage root URI (`--storage`): `spec.storage.uri`.
pub const STORAGE: &str = "QUIVER_STORAGE";
/// The version a train, build or finalize Job works on (`--version`).
pub const VERSION: &str = "QUIVER_VERSION";
/// `metadata.uid` of the `VectorIndex` a cleanup Job purges (`index-node purge --uid`).
pub const INDEX_UID: &str = "QUIVER_INDEX_UID";
/// Threads running requests (`--worker-threads`; 0 = one per core); the operator derives it
/// from the pod's CPU limit.
pub const WORKER_THREADS: &str = "QUIVER_WORKER_THREADS";
/// Set by Kubernetes in the pods of an Indexed Job: the build part of a build pod (`--part`).
pub const JOB_COMPLETION_INDEX: &str = "JOB_COMPLETION_INDEX";

/// Every variable above, for tests and for `kubectl quiver` diagnostics.
pub const ALL: [&str; 10] = [
    INDEX,
    NAMESPACE,
    POD_NAME,
    LISTEN_IP,
    SHARD,
    STORAGE,
    VERSION,
    INDEX_UID,
    WORKER_THREADS,
    JOB_COMPLETION_INDEX,
];

// Storage credentials are not listed here: the pods get them from `spec.storage.secretRef`
// (envFrom), under the names each cloud's own tools use (`AWS_*`, `GOOGLE_*`, `AZURE_*`).
