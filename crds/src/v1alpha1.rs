//! `VectorIndex` (`quiver.dev/v1alpha1`): one IVF vector index served by a cluster of
//! index-node pods.
//!
//! The doc comments below are the CRD's schema descriptions, so they are what
//! `kubectl explain vectorindex.spec...` prints: they speak to the user writing the resource.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Most shards an index may have.
pub const MAX_SHARDS: u32 = 256;
/// Largest vector dimension.
pub const MAX_DIMENSION: u32 = 4096;
/// Most inverted lists (k-means centroids).
pub const MAX_NLIST: u32 = 1 << 20;
/// Vectors sampled per list for training when `spec.index.training.sampleSize` is not set
/// (the engine's per-centroid cap).
pub const SAMPLE_PER_LIST: u64 = 256;
/// Training points a PQ codebook needs at least (one per code).
pub const PQ_MIN_TRAINING: u64 = 256;
/// nprobe when `spec.index.nprobe` is not set (or nlist, when that is smaller).
pub const DEFAULT_NPROBE: u32 = 16;

/// A vector index: what to index (`source`), how (`dimension`, `metric`, `index`), where its
/// versions live (`storage`) and how it is served (`shards`, `replicas`, `router`). The operator
/// trains, builds, checks and swaps whole index versions; `status` says which version serves.
///
/// Fields that shape the index (dimension, metric, index, source, shards) may change at any
/// time: a change makes a new version, which is trained, built, warmed and gated while the
/// current one keeps serving. Only `storage.uri` is immutable.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "quiver.dev",
    version = "v1alpha1",
    kind = "VectorIndex",
    plural = "vectorindexes",
    namespaced,
    status = "VectorIndexStatus",
    shortname = "vi",
    category = "quiver",
    derive = "PartialEq",
    doc = "A vector index served by a cluster of index-node pods (Quiver).",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Whether the index answers queries from a version that passed its gate"
    ),
    printcolumn(
        name = "Active",
        type_ = "string",
        json_path = ".status.activeVersion",
        description = "The version queries are served from"
    ),
    printcolumn(
        name = "Target",
        type_ = "string",
        json_path = ".status.targetVersion",
        description = "The version being prepared, if any"
    ),
    printcolumn(
        name = "Recall",
        type_ = "number",
        json_path = ".status.recall",
        description = "Gate recall of the active version"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    validation = Rule::new("self.metadata.name.size() <= 37").message(
        "metadata.name: at most 37 characters, so that <name>-<version>-finalize fits 63"
    ),
    validation = Rule::new("self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')").message(
        "metadata.name: must start with a letter and hold only lower-case letters, digits and '-' (the index's Service has the same name)"
    )
)]
#[x_kube(
    validation = Rule::new("!has(self.index.quantizer.m) || self.dimension % self.index.quantizer.m == 0")
        .message("spec.index.quantizer.m must divide spec.dimension")
        .field_path(".index.quantizer.m"),
    validation = Rule::new("self.rollout.evalK <= self.router.maxK")
        .message("spec.rollout.evalK must not exceed spec.router.maxK")
        .field_path(".rollout.evalK"),
    validation = Rule::new("!has(self.rebalance) || !has(self.rebalance.maxReplicasPerShard) || self.rebalance.maxReplicasPerShard >= self.replicas")
        .message("spec.rebalance.maxReplicasPerShard must be at least spec.replicas")
        .field_path(".rebalance.maxReplicasPerShard"),
    validation = Rule::new("!has(self.source.synthetic) || self.source.synthetic.count >= self.index.nlist")
        .message("spec.source.synthetic.count must be at least spec.index.nlist (k-means needs a vector per list)")
        .field_path(".source.synthetic.count"),
    validation = Rule::new("!has(self.source.synthetic) || self.source.synthetic.count >= 2 * self.rollout.evalQueries")
        .message("spec.source.synthetic.count must be at least twice spec.rollout.evalQueries (the build holds out at most half the vectors for evaluation)")
        .field_path(".source.synthetic.count")
)]
#[serde(rename_all = "camelCase")]
pub struct VectorIndexSpec {
    /// Number of components of every vector. Changing it makes a new version.
    #[schemars(range(min = 1, max = 4096))]
    pub dimension: u32,

    /// Distance: `l2` (squared Euclidean), `ip` (inner product) or `cosine`. Changing it makes
    /// a new version.
    #[serde(default)]
    pub metric: Metric,

    /// The IVF structure: lists, quantizer, training, default nprobe.
    #[serde(default)]
    pub index: IndexSpec,

    /// What to index: vector files, or generated data.
    pub source: SourceSpec,

    /// Where index versions are stored.
    pub storage: StorageSpec,

    /// Number of shards the lists are spread over. Changing it makes a new version (a new
    /// shard map over the same lists).
    #[serde(default = "default_shards")]
    #[schemars(range(min = 1, max = 256))]
    pub shards: u32,

    /// Replicas of each shard (pods of each shard's StatefulSet). Default 2, so that a
    /// rolling restart or a lost node does not stop queries.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 1, max = 100))]
    pub replicas: u32,

    /// The routers: the pods clients query.
    #[serde(default)]
    pub router: RouterSpec,

    /// How versions are built.
    #[serde(default)]
    pub build: BuildSpec,

    /// When a new version may replace the active one.
    #[serde(default)]
    pub rollout: RolloutSpec,

    /// Scheduled retraining. A one-off retrain is asked for with the annotation
    /// `quiver.dev/retrain=<token>` (or `kubectl quiver retrain`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retrain: Option<RetrainSpec>,

    /// When a plan that moves whole lists between shards is applied (`status.load.plan`): a new
    /// version whose manifest reuses the active version's files, with no train or build.
    #[serde(default)]
    pub rebalance: RebalanceSpec,

    /// Serve exactly this retained version (e.g. `v2-7f3a9c2e`) instead of the newest one
    /// that passed its gate: for rollbacks and GitOps. Empty or unset: follow new versions.
    /// Versions it names must still be in storage (see `storage.retainVersions`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(max = 63),
        regex(pattern = r"^(v[1-9][0-9]{0,5}-[0-9a-f]{8})?$")
    )]
    pub pinned_version: Option<String>,

    /// Pod settings of the shards, routers and Jobs.
    #[serde(default)]
    pub pods: PodsSpec,
}

fn default_shards() -> u32 {
    1
}

fn default_replicas() -> u32 {
    2
}

/// Distance metric.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    /// Squared Euclidean distance.
    #[default]
    L2,
    /// Inner product (maximum inner product search).
    Ip,
    /// Cosine similarity (vectors are normalised, then compared by inner product).
    Cosine,
}

impl Metric {
    /// The wire name, which is also index-node's `--metric` value and the manifest's.
    pub fn as_str(self) -> &'static str {
        match self {
            Metric::L2 => "l2",
            Metric::Ip => "ip",
            Metric::Cosine => "cosine",
        }
    }
}

impl std::fmt::Display for Metric {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The IVF structure. Changing any of it makes a new version.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(
    validation = Rule::new("!has(self.nprobe) || self.nprobe <= self.nlist")
        .message("spec.index.nprobe must not exceed spec.index.nlist")
        .field_path(".nprobe"),
    validation = Rule::new("!has(self.training.sampleSize) || self.training.sampleSize >= self.nlist")
        .message("spec.index.training.sampleSize must be at least spec.index.nlist")
        .field_path(".training.sampleSize"),
    validation = Rule::new("self.quantizer.kind != 'pq' || !has(self.training.sampleSize) || self.training.sampleSize >= 256")
        .message("spec.index.training.sampleSize must be at least 256 for a pq quantizer (one training vector per code)")
        .field_path(".training.sampleSize")
)]
#[serde(rename_all = "camelCase")]
pub struct IndexSpec {
    /// Number of inverted lists (k-means centroids). Roughly 4·√N for N vectors is a good
    /// start. Changing it makes a new version.
    #[serde(default = "default_nlist")]
    #[schemars(range(min = 1, max = 1048576))]
    pub nlist: u32,

    /// How list entries are encoded. Changing it makes a new version.
    #[serde(default)]
    pub quantizer: QuantizerSpec,

    /// How the centroids are trained. Changing it makes a new version.
    #[serde(default)]
    pub training: TrainingSpec,

    /// Lists a query probes when it does not say (routers' default; a query may override).
    /// Default 16, or nlist when that is smaller. A query-time setting: routers read it from
    /// this spec and apply it at once (capped at each version's nlist), with no new version;
    /// the gate and the canary measure recall at it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1048576))]
    pub nprobe: Option<u32>,
}

fn default_nlist() -> u32 {
    1024
}

impl Default for IndexSpec {
    fn default() -> Self {
        IndexSpec {
            nlist: default_nlist(),
            quantizer: QuantizerSpec::default(),
            training: TrainingSpec::default(),
            nprobe: None,
        }
    }
}

impl IndexSpec {
    /// The nprobe queries get by default: `nprobe`, else 16 capped at `nlist`.
    pub fn effective_nprobe(&self) -> u32 {
        self.nprobe.unwrap_or(DEFAULT_NPROBE.min(self.nlist)).max(1)
    }

    /// Vectors sampled for training: `training.sampleSize`, else 256 per list.
    pub fn effective_sample_size(&self) -> u64 {
        self.training
            .sample_size
            .unwrap_or(SAMPLE_PER_LIST * u64::from(self.nlist))
    }
}

/// How list entries are stored.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[x_kube(
    validation = Rule::new("self.kind != 'pq' || has(self.m)")
        .message("spec.index.quantizer.m is required when kind is pq")
        .field_path(".m"),
    validation = Rule::new("self.kind == 'pq' || !has(self.m)")
        .message("spec.index.quantizer.m is only valid with kind pq")
        .field_path(".m"),
    validation = Rule::new("self.kind != 'flat' || !self.rerank")
        .message("spec.index.quantizer.rerank needs kind sq8 or pq (flat entries are exact already)")
        .field_path(".rerank")
)]
#[serde(rename_all = "camelCase")]
pub struct QuantizerSpec {
    /// `flat` (full vectors, exact distances, 4 bytes per component), `sq8` (one byte per
    /// component) or `pq` (`m` bytes per vector).
    #[serde(default)]
    pub kind: QuantizerKind,

    /// PQ only, and required there: sub-quantizers (bytes per vector); must divide
    /// `spec.dimension`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 4096))]
    pub m: Option<u32>,

    /// SQ8 and PQ only: keep the full vectors beside the codes and re-rank candidates with
    /// exact distances (better recall, more memory).
    #[serde(default)]
    pub rerank: bool,
}

impl QuantizerSpec {
    /// index-node's `--quantizer` value and the manifest's: `flat`, `sq8` or `pq<m>`.
    pub fn engine_name(&self) -> String {
        match self.kind {
            QuantizerKind::Flat => "flat".into(),
            QuantizerKind::Sq8 => "sq8".into(),
            QuantizerKind::Pq => format!("pq{}", self.m.unwrap_or(0)),
        }
    }
}

/// The encoding of list entries.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum QuantizerKind {
    /// Full f32 vectors.
    #[default]
    Flat,
    /// 8-bit scalar quantizer on residuals.
    Sq8,
    /// Product quantizer on residuals.
    Pq,
}

impl QuantizerKind {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            QuantizerKind::Flat => "flat",
            QuantizerKind::Sq8 => "sq8",
            QuantizerKind::Pq => "pq",
        }
    }
}

/// k-means training of the coarse centroids.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TrainingSpec {
    /// Source vectors sampled for training. Default: 256 per list (nlist × 256), or all
    /// vectors when there are fewer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000000))]
    pub sample_size: Option<u64>,

    /// k-means iterations.
    #[serde(default = "default_iterations")]
    #[schemars(range(min = 1, max = 1000))]
    pub iterations: u32,

    /// Cluster-size balancing strength: 0 is plain k-means; above 0, lists larger than
    /// (1 + 1/balance) × the mean are split during training.
    #[serde(default)]
    #[schemars(range(min = 0.0, max = 100.0))]
    pub balance: f64,

    /// Seed of sampling and k-means: the same seed, source and parameters train the same
    /// centroids.
    #[serde(default = "default_seed")]
    pub seed: u32,
}

fn default_iterations() -> u32 {
    25
}

fn default_seed() -> u32 {
    42
}

impl Default for TrainingSpec {
    fn default() -> Self {
        TrainingSpec {
            sample_size: None,
            iterations: default_iterations(),
            balance: 0.0,
            seed: default_seed(),
        }
    }
}

/// What to index: exactly one of `uri` and `synthetic`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[x_kube(
    validation = Rule::new("has(self.uri) != has(self.synthetic)")
        .message("exactly one of spec.source.uri and spec.source.synthetic must be set"),
    validation = Rule::new("!has(self.synthetic) || !has(self.idOffset) || self.idOffset + self.synthetic.count <= 2147483648")
        .message("spec.source.idOffset plus spec.source.synthetic.count passes the largest id 2^31-1")
        .field_path(".idOffset")
)]
#[serde(rename_all = "camelCase")]
pub struct SourceSpec {
    /// A vector file (`.fvecs`, `.bvecs` or `.npy`) or a directory of them (ending in `/`,
    /// read in name order): `file:///path` (on one machine, or a volume every pod mounts),
    /// `s3://bucket/key`, `gs://bucket/key` or `az://container/key`. Read with the
    /// credentials of `spec.storage.secretRef`. Changing it makes a new version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048), regex(pattern = r"^(file|s3|gs|az)://.+$"))]
    pub uri: Option<String>,

    /// Generated clustered vectors of `spec.dimension` components, for demos and tests.
    /// Changing it makes a new version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synthetic: Option<SyntheticSource>,

    /// Any string; changing it makes a new version from the source's current contents (the
    /// operator cannot see that the files behind `uri` changed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub revision: Option<String>,

    /// Added to each vector's row number in the source (counted from 0 across files) to make
    /// its id: ids are `idOffset`, `idOffset + 1`, …. Ids fit 31 bits (the evaluation ground
    /// truth stores them as `.ivecs`), so `idOffset` plus the row count must stay below 2^31.
    /// Changing it makes a new version.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    #[schemars(range(max = 2147483647))]
    pub id_offset: u64,
}

fn is_zero_u64(v: &u64) -> bool {
    *v == 0
}

/// Generated data.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SyntheticSource {
    /// Number of vectors.
    #[schemars(range(min = 1, max = 1000000000))]
    pub count: u64,

    /// Seed of the generator: the same seed and count give the same vectors.
    #[serde(default = "default_seed")]
    pub seed: u32,
}

/// Where versions are stored: `<uri>/<namespace>/<name>/versions/<version>/`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// Storage root: `s3://bucket/prefix`, `gs://bucket/prefix`, `az://container/prefix`, or
    /// `file:///path` (one machine, or a volume every pod mounts). Immutable: the versions
    /// already built live there; to move an index, create a new VectorIndex.
    #[schemars(length(max = 2048), regex(pattern = r"^(file|s3|gs|az)://.+$"))]
    #[x_kube(validation = Rule::new("self == oldSelf")
        .message("spec.storage.uri is immutable: the built versions live there; create a new VectorIndex to move an index"))]
    pub uri: String,

    /// Secret in the same namespace whose keys become the environment of every pod that reads
    /// or writes storage (`AWS_*`, `GOOGLE_*`, `AZURE_*`, as each cloud's tools name them).
    /// The operator itself never reads it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretRef>,

    /// Versions kept in storage, the active one included; older ones are deleted once retired.
    /// Rollbacks (`pinnedVersion`) can go back to these.
    #[serde(default = "default_retain")]
    #[schemars(range(min = 1, max = 100))]
    pub retain_versions: u32,

    /// What happens to the files when the VectorIndex is deleted: `Retain` (default) keeps
    /// them, `Delete` removes every version first.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
}

fn default_retain() -> u32 {
    2
}

/// A Secret in the VectorIndex's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// What to do with an index's files when the resource is deleted.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeletionPolicy {
    /// Keep the files.
    #[default]
    Retain,
    /// Delete every version's files.
    Delete,
}

/// The routers.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RouterSpec {
    /// Router pods (a Deployment behind the Service named like the index).
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 1, max = 100))]
    pub replicas: u32,

    /// Largest k a query may ask for.
    #[serde(default = "default_max_k")]
    #[schemars(range(min = 1, max = 10000))]
    pub max_k: u32,
}

fn default_max_k() -> u32 {
    1000
}

impl Default for RouterSpec {
    fn default() -> Self {
        RouterSpec {
            replicas: default_replicas(),
            max_k: default_max_k(),
        }
    }
}

/// How versions are built.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BuildSpec {
    /// Pods of the Indexed build Job; each encodes a slice of the source.
    #[serde(default = "default_parts")]
    #[schemars(range(min = 1, max = 1000))]
    pub parts: u32,
}

fn default_parts() -> u32 {
    1
}

impl Default for BuildSpec {
    fn default() -> Self {
        BuildSpec {
            parts: default_parts(),
        }
    }
}

/// The gate a new version passes before it serves.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RolloutSpec {
    /// Recall@evalK the new version must reach on the held-out evaluation queries (with the
    /// default nprobe); below it the version fails and the active one keeps serving. 0 turns
    /// the gate off.
    #[serde(default = "default_min_recall")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub min_recall: f64,

    /// Source vectors held out of the index as evaluation queries.
    #[serde(default = "default_eval_queries")]
    #[schemars(range(min = 1, max = 100000))]
    pub eval_queries: u32,

    /// k of the recall check; at most `spec.router.maxK`.
    #[serde(default = "default_eval_k")]
    #[schemars(range(min = 1, max = 10000))]
    pub eval_k: u32,
}

fn default_min_recall() -> f64 {
    0.9
}

fn default_eval_queries() -> u32 {
    500
}

fn default_eval_k() -> u32 {
    10
}

impl Default for RolloutSpec {
    fn default() -> Self {
        RolloutSpec {
            min_recall: default_min_recall(),
            eval_queries: default_eval_queries(),
            eval_k: default_eval_k(),
        }
    }
}

/// Automatic retraining: on a schedule, or when live queries drift from the indexed data.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RetrainSpec {
    /// Cron schedule, as a CronJob's (five fields, names, `@daily`...), e.g. `0 3 * * 0` for
    /// Sundays at 03:00. Runs missed while the operator was down count once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub schedule: Option<String>,

    /// IANA time zone of the schedule (e.g. `Europe/Berlin`); default UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub time_zone: Option<String>,

    /// Retrain when live queries drift from the indexed data (see `status.drift`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift: Option<DriftSpec>,
}

/// When the operator applies its rebalance plan (`status.load.plan`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RebalanceSpec {
    /// `Off`: never; `Manual` (default): once per new `quiver.dev/rebalance=<token>` annotation
    /// (`kubectl quiver rebalance NAME`); `Auto`: when `status.load.imbalance` has stayed above
    /// `threshold` for `windowSeconds`.
    #[serde(default)]
    pub mode: RebalanceMode,

    /// Imbalance (the most loaded shard's load per replica over the mean) that Auto acts on.
    #[serde(default = "default_rebalance_threshold")]
    #[schemars(range(min = 1.05, max = 100.0))]
    pub threshold: f64,

    /// Seconds the imbalance must stay above the threshold, without a dip, before Auto acts;
    /// after a rebalance the next one waits a full window again, so the map never flaps.
    #[serde(default = "default_rebalance_window")]
    #[schemars(range(min = 5, max = 86400))]
    pub window_seconds: u32,

    /// Replicas a hot shard may grow to in Auto mode, when after the window no split or move
    /// is left to bring the imbalance below `threshold` (default: `spec.replicas`, so never).
    /// Routers spread the shard's queries over its replicas. An extra replica is given back,
    /// one at a time, once the shard's load has fit one replica fewer for `windowSeconds`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub max_replicas_per_shard: Option<u32>,

    /// Whether a rebalance may split a hot list (a new version with one more list). Off keeps
    /// `nlist` fixed: hot lists are then only moved, and a hot shard gets replicas.
    #[serde(default = "default_true")]
    pub split_lists: bool,

    /// Bytes of lists one rebalance may move between shards (what the receiving shards load
    /// into memory); the plan stops at this budget. Default 1 GiB.
    #[serde(default = "default_rebalance_bytes")]
    #[schemars(range(min = 1048576))]
    pub max_bytes_per_step: u64,
}

impl Default for RebalanceSpec {
    fn default() -> Self {
        RebalanceSpec {
            mode: RebalanceMode::default(),
            threshold: default_rebalance_threshold(),
            window_seconds: default_rebalance_window(),
            max_replicas_per_shard: None,
            max_bytes_per_step: default_rebalance_bytes(),
            split_lists: true,
        }
    }
}

fn default_true() -> bool {
    true
}

fn default_rebalance_bytes() -> u64 {
    1 << 30
}

fn default_rebalance_threshold() -> f64 {
    1.5
}

fn default_rebalance_window() -> u32 {
    600
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RebalanceMode {
    Off,
    #[default]
    Manual,
    Auto,
}

/// When query drift retrains. Routers compare each live query's distance to its nearest
/// centroid with the same distance of the version's held-out vectors; `status.drift.statistic`
/// is the Kolmogorov–Smirnov distance of the two distributions (0: alike, 1: disjoint).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DriftSpec {
    /// Retrain once the statistic exceeds this (e.g. 0.25). A version made for drift does not
    /// retrain for drift again: retraining on the same data cannot follow queries elsewhere.
    #[schemars(range(min = 0.01, max = 1.0))]
    pub threshold: f64,

    /// Live queries needed before the statistic may trigger (fewer are noise).
    #[serde(default = "default_drift_min_queries")]
    #[schemars(range(min = 100))]
    pub min_queries: u64,
}

fn default_drift_min_queries() -> u64 {
    1000
}

/// Query drift of the active version as the routers measured it.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DriftStatus {
    /// The version the queries ran on.
    pub version: String,
    /// Kolmogorov–Smirnov distance between the live queries' nearest-centroid distances and
    /// the version's held-out vectors' (0: alike, 1: disjoint).
    pub statistic: f64,
    /// Live queries measured (since the routers loaded the version).
    pub queries: u64,
    /// When it was measured. The figure in the status is refreshed at most every 5 minutes
    /// (each refresh is a write); the operator's metric follows every reconcile.
    pub measured_at: Time,
}

/// Where the active version's query load falls, as the operator measures it from the routers'
/// per-list probe counts: a list's load is its scan cost (probes per second × entries,
/// smoothed with a half-life), a shard's the sum of its lists'.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LoadStatus {
    /// The version the queries ran on.
    pub version: String,
    /// The most loaded shard's load per replica over the mean per replica: 1 when balanced,
    /// 2 when one shard's replicas work twice as hard as the average replica.
    pub imbalance: f64,
    /// Every shard's share of the load (shares sum to 1), with its Ready replicas.
    pub shards: Vec<ShardLoad>,
    /// The hottest lists, hottest first (at most 5).
    pub hottest_lists: Vec<HotList>,
    /// What moving whole lists between shards would do now (`kubectl quiver rebalance
    /// --dry-run` prints it); absent when no move lowers the most loaded shard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<RebalancePlan>,
    /// When it was measured. Rewritten only when a figure changes at the precision shown.
    pub measured_at: Time,
}

/// A shard the operator runs with more replicas than `spec.replicas` because it stayed hot.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HotShard {
    /// Shard number.
    pub shard: u32,
    /// Replicas its StatefulSet runs.
    pub replicas: u32,
    /// Since when its load has fit one replica fewer (one is given back after
    /// `spec.rebalance.windowSeconds`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cool_since: Option<Time>,
}

impl LoadStatus {
    /// The split this summary asks for: its plan's `splitList`, the new half going to the
    /// shard with the least load per replica (another shard than the list's when there is
    /// one). The operator acts on it; `kubectl quiver rebalance --dry-run` prints it.
    pub fn split(&self) -> Option<ListSplit> {
        let list = self.plan.as_ref()?.split_list?;
        let from = self
            .hottest_lists
            .iter()
            .find(|h| h.list == list)
            .map(|h| h.shard)?;
        let per_replica = |s: &ShardLoad| s.share / f64::from(s.replicas.max(1));
        let to = self
            .shards
            .iter()
            .filter(|s| s.shard != from)
            .min_by(|a, b| {
                per_replica(a)
                    .total_cmp(&per_replica(b))
                    .then(a.shard.cmp(&b.shard))
            })
            .map_or(from, |s| s.shard);
        Some(ListSplit { list, from, to })
    }
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ShardLoad {
    /// Shard number.
    pub shard: u32,
    /// Share of the index's load (0 to 1).
    pub share: f64,
    /// Ready replicas the share is spread over.
    pub replicas: u32,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HotList {
    /// List (centroid) number.
    pub list: u32,
    /// The shard that holds it.
    pub shard: u32,
    /// Share of the index's load (0 to 1).
    pub share: f64,
    /// Entries in the list.
    pub entries: u64,
}

/// Moves of whole lists between shards that lower the most loaded shard's load per replica,
/// within a budget of bytes moved (the planner's; see `operator/README.md`).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RebalancePlan {
    /// The moves, at most 64.
    pub moves: Vec<ListMove>,
    /// Bytes the moves copy into their new shards' memory.
    pub bytes: u64,
    /// `imbalance` after the moves.
    pub imbalance_after: f64,
    /// A list whose own load per replica exceeds the mean shard's: moving it only moves the
    /// hot spot, splitting it would help.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split_list: Option<u32>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ListMove {
    /// List (centroid) number.
    pub list: u32,
    /// The shard that holds it now.
    pub from: u32,
    /// The shard that would hold it.
    pub to: u32,
    /// Bytes of its entries in a shard's memory.
    pub bytes: u64,
}

/// Pod settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodsSpec {
    /// index-node image; default: the one the operator was installed with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub image: Option<String>,

    /// Image pull policy of every pod (`Always`, `IfNotPresent`, `Never`); default: the
    /// Kubernetes default for the image's tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<PullPolicy>,

    /// Resources of each role's containers.
    #[serde(default)]
    pub resources: RoleResources,

    /// Node labels every pod's node must have.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,

    /// Tolerations of every pod.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
}

// When the kubelet pulls the image. (No doc comment: on an optional field the type's
// description would replace the field's in the schema.)
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PullPolicy {
    /// On every pod start.
    Always,
    /// When the node does not have it.
    IfNotPresent,
    /// Never; the image must be on the node.
    Never,
}

/// Container resources per role.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RoleResources {
    /// Shard pods: memory must hold the lists of every version a shard holds at once (two
    /// during a swap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<ResourceRequirements>,

    /// Router pods: they hold the centroids of each loaded version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub router: Option<ResourceRequirements>,

    /// Train, build, finalize and garbage-collection Job pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<ResourceRequirements>,
}

/// What the operator observed and decided. The operator is the only writer; index-node pods
/// read `versions` and `activeVersion` and converge to them.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VectorIndexStatus {
    /// The `metadata.generation` of the spec this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Summary: `Pending` (nothing built yet), `Building` (first version on its way),
    /// `Ready` (serving), `Degraded` (serving, but something needs attention: see
    /// conditions), `Failed` (not serving).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<IndexPhase>,

    /// The version routers pin new queries to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_version: Option<String>,

    /// The version being prepared (warming or gating), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_version: Option<String>,

    /// Gate recall of the active version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recall: Option<f64>,

    /// Known versions, newest first. Shard and router pods hold every version whose phase
    /// is Warming, Gating, Active or Draining, and nothing else.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub versions: Vec<VersionStatus>,

    /// Counter of the newest version made; never decreases, so a version name is never
    /// reused even after older versions left this list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_counter: Option<u32>,

    /// The `quiver.dev/retrain` annotation value last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_retrain: Option<String>,

    /// The `quiver.dev/rebalance` annotation value last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_rebalance: Option<String>,

    /// When the last scheduled retrain (`spec.retrain.schedule`) started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scheduled_retrain: Option<Time>,

    /// Query drift of the active version (published whether or not
    /// `spec.retrain.drift` is set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift: Option<DriftStatus>,

    /// Where the active version's query load falls, per shard and per list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load: Option<LoadStatus>,

    /// Shards running more replicas than `spec.replicas` because they stayed hot
    /// (`spec.rebalance.maxReplicasPerShard`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hot_shards: Vec<HotShard>,

    /// Ready shard pods over desired (shards × replicas).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shards: Option<ReadyCount>,

    /// Ready router pods over desired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routers: Option<ReadyCount>,

    /// `Ready`, `Progressing`, `Degraded`, with a reason and a message;
    /// `lastTransitionTime` changes only when a condition's status flips.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

impl VectorIndexStatus {
    /// The status entry of version `name`.
    pub fn version(&self, name: &str) -> Option<&VersionStatus> {
        self.versions.iter().find(|v| v.name == name)
    }

    /// The versions index-node pods must hold (Warming, Gating, Active, Draining).
    pub fn held_versions(&self) -> impl Iterator<Item = &VersionStatus> {
        self.versions.iter().filter(|v| v.phase.is_held())
    }

    /// The condition of type `type_`.
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }
}

// The index's summary phase (no doc comment, see PullPolicy).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
pub enum IndexPhase {
    /// Nothing built yet.
    Pending,
    /// The first version is being trained, built or warmed.
    Building,
    /// Serving.
    Ready,
    /// Serving, but something needs attention (see conditions).
    Degraded,
    /// Not serving.
    Failed,
}

/// One index version as the operator tracks it.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VersionStatus {
    /// Version name, `v<counter>-<short uid>`: also its directory in storage and part of its
    /// Job names.
    pub name: String,

    /// Pending → Training → Building → Warming → Gating → Active → Draining → Retired, or
    /// Failed (see `reason`).
    pub phase: VersionPhase,

    /// Why the version was made: `create`, `spec`, `source`, `retrain:<token>`, `schedule`,
    /// `drift`, `canary` or `rebalance`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<String>,

    /// Hash of the spec fields the version was built from (also in its manifest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec_hash: Option<String>,

    /// Shards of this version's shard map. Shard pods whose number is not below it do not
    /// hold this version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shards: Option<u32>,

    /// Recall measured by the gate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recall: Option<f64>,

    /// Vectors indexed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vectors: Option<u64>,

    /// When the operator decided to make it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<Time>,

    /// When `phase` last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,

    /// Failed attempts of the current phase (retries back off with it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,

    /// Why the version failed, or what it waits for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,

    /// A rebalance: the version whose files this one reuses (only its manifest is new).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rebalanced_from: Option<String>,

    /// A rebalance: the lists it moves from their shard in `rebalancedFrom`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub moves: Vec<ListMove>,

    /// A rebalance that splits one hot list of `rebalancedFrom` in two (nlist + 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<ListSplit>,
}

/// One list split in two by 2-means over its vectors: one half keeps the list's number and
/// shard, the other becomes list `nlist` (the new last list) on shard `to`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ListSplit {
    /// List (centroid) number.
    pub list: u32,
    /// The shard that holds it (and keeps one half).
    pub from: u32,
    /// The shard that takes the other half.
    pub to: u32,
}

impl VersionStatus {
    /// A version just decided on: phase Pending, nothing else known yet.
    pub fn pending(name: impl Into<String>) -> Self {
        VersionStatus {
            name: name.into(),
            phase: VersionPhase::Pending,
            trigger: None,
            spec_hash: None,
            shards: None,
            recall: None,
            vectors: None,
            created_at: None,
            last_transition_time: None,
            attempts: None,
            reason: None,
            rebalanced_from: None,
            moves: Vec::new(),
            split: None,
        }
    }
}

/// A version's lifecycle phase.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum VersionPhase {
    /// Decided on; its Jobs are being created.
    Pending,
    /// The train Job runs.
    Training,
    /// The build (and finalize) Jobs run.
    Building,
    /// Shard pods load and warm its lists.
    Warming,
    /// A router measures its recall.
    Gating,
    /// Routers pin new queries to it.
    Active,
    /// Replaced; queries already pinned to it finish.
    Draining,
    /// No longer served; its files may be deleted.
    Retired,
    /// Training, building, warming or the gate failed (see `reason`).
    Failed,
}

impl VersionPhase {
    /// Whether the version is still being prepared (Pending through Gating): at most one is,
    /// per index, and a newer trigger supersedes it.
    pub fn is_preparing(self) -> bool {
        matches!(
            self,
            VersionPhase::Pending
                | VersionPhase::Training
                | VersionPhase::Building
                | VersionPhase::Warming
                | VersionPhase::Gating
        )
    }

    /// Whether index-node pods hold the version (the whole node contract): Warming, Gating,
    /// Active or Draining.
    pub fn is_held(self) -> bool {
        matches!(
            self,
            VersionPhase::Warming
                | VersionPhase::Gating
                | VersionPhase::Active
                | VersionPhase::Draining
        )
    }

    /// Whether the version reached an end (Retired or Failed).
    pub fn is_final(self) -> bool {
        matches!(self, VersionPhase::Retired | VersionPhase::Failed)
    }
}

/// Ready pods over desired pods.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ReadyCount {
    /// Pods whose Ready condition is True.
    pub ready: u32,
    /// Pods wanted.
    pub desired: u32,
}

/// Condition types of `status.conditions` and reasons the API itself defines.
pub mod conditions {
    /// True when queries are answered from a version that passed its gate.
    pub const READY: &str = "Ready";
    /// True while a version is being trained, built, warmed or gated.
    pub const PROGRESSING: &str = "Progressing";
    /// True when something needs attention while the index keeps serving.
    pub const DEGRADED: &str = "Degraded";
    /// Reason of a condition set because [`crate::validate`] refused the spec.
    pub const REASON_INVALID_SPEC: &str = "InvalidSpec";
}

impl VectorIndexSpec {
    /// The `VectorIndex` name rules and the spec rules; see [`crate::validate()`].
    pub fn validate(&self, name: &str) -> Result<(), crate::ValidationErrors> {
        crate::validate(name, self)
    }
}
