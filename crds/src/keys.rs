//! Label and annotation keys, the field manager and the finalizer: the strings the operator,
//! the nodes, the chart and `kubectl quiver` must agree on.

/// The field manager of every server-side apply the operator makes (children and status).
pub const FIELD_MANAGER: &str = "quiver-operator";

/// Finalizer the operator puts on a `VectorIndex` whose `spec.storage.deletionPolicy` is
/// `Delete`: it is removed once a garbage-collection Job has deleted the index's files.
pub const FINALIZER: &str = "quiver.dev/storage";

/// Label keys and values. Every child object of an index carries [`labels::INDEX`] and the
/// `app.kubernetes.io` set; pods also carry [`labels::ROLE`], shard pods [`labels::SHARD`], Job
/// pods [`labels::VERSION`].
pub mod labels {
    use std::collections::BTreeMap;

    /// `app.kubernetes.io/name`: the application, always [`APP_NAME`].
    pub const NAME: &str = "app.kubernetes.io/name";
    /// `app.kubernetes.io/instance`: the `VectorIndex` name.
    pub const INSTANCE: &str = "app.kubernetes.io/instance";
    /// `app.kubernetes.io/component`: the role (same value as [`ROLE`]).
    pub const COMPONENT: &str = "app.kubernetes.io/component";
    /// `app.kubernetes.io/managed-by`: always [`MANAGED_BY`].
    pub const MANAGED_BY_KEY: &str = "app.kubernetes.io/managed-by";
    /// `app.kubernetes.io/part-of`: always [`PART_OF`].
    pub const PART_OF_KEY: &str = "app.kubernetes.io/part-of";

    /// Value of [`NAME`].
    pub const APP_NAME: &str = "quiver-index";
    /// Value of [`MANAGED_BY_KEY`] (the operator's field manager).
    pub const MANAGED_BY: &str = super::FIELD_MANAGER;
    /// Value of [`PART_OF_KEY`].
    pub const PART_OF: &str = "quiver";

    /// `quiver.dev/index`: the `VectorIndex` an object belongs to. The operator deletes
    /// orphans by it; routers select their index's shard pods by it.
    pub const INDEX: &str = "quiver.dev/index";
    /// `quiver.dev/role`: what a pod does, one of [`Role`]'s values.
    pub const ROLE: &str = "quiver.dev/role";
    /// `quiver.dev/shard`: the shard number of a shard pod (decimal).
    pub const SHARD: &str = "quiver.dev/shard";
    /// `quiver.dev/version`: the version a train, build or finalize Job (and its pods) works on.
    pub const VERSION: &str = "quiver.dev/version";

    /// The values of [`ROLE`] (and [`COMPONENT`]).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub enum Role {
        /// Serves inverted lists (`index-node serve --role shard`).
        Shard,
        /// Routes queries to shards (`index-node serve --role router`).
        Router,
        /// Trains centroids and codebooks (`index-node train`).
        Train,
        /// Builds a part of the lists (`index-node build --part i`).
        Build,
        /// Merges build parts and writes the manifest (`index-node build --finalize`).
        Finalize,
        /// Deletes retired versions' files.
        Gc,
        /// Writes a rebalanced version's manifest over another version's files
        /// (`index-node remap`).
        Remap,
        /// Splits one list of another version in two (`index-node split`).
        Split,
    }

    impl Role {
        /// Every role, in the order above.
        pub const ALL: [Role; 8] = [
            Role::Shard,
            Role::Router,
            Role::Train,
            Role::Build,
            Role::Finalize,
            Role::Gc,
            Role::Remap,
            Role::Split,
        ];

        /// The label value.
        pub fn as_str(self) -> &'static str {
            match self {
                Role::Shard => "shard",
                Role::Router => "router",
                Role::Train => "train",
                Role::Build => "build",
                Role::Finalize => "finalize",
                Role::Gc => "gc",
                Role::Remap => "remap",
                Role::Split => "split",
            }
        }

        /// The role a label value names.
        pub fn parse(value: &str) -> Option<Role> {
            Role::ALL.into_iter().find(|r| r.as_str() == value)
        }
    }

    impl std::fmt::Display for Role {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.as_str())
        }
    }

    /// Labels every child object of `index` carries (the operator's orphan selector is
    /// `quiver.dev/index=<index>`).
    pub fn for_index(index: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            (NAME.to_string(), APP_NAME.to_string()),
            (INSTANCE.to_string(), index.to_string()),
            (MANAGED_BY_KEY.to_string(), MANAGED_BY.to_string()),
            (PART_OF_KEY.to_string(), PART_OF.to_string()),
            (INDEX.to_string(), index.to_string()),
        ])
    }

    /// Labels of the pods (and their controllers) of one role of `index`.
    pub fn for_role(index: &str, role: Role) -> BTreeMap<String, String> {
        let mut l = for_index(index);
        l.insert(COMPONENT.to_string(), role.as_str().to_string());
        l.insert(ROLE.to_string(), role.as_str().to_string());
        l
    }

    /// Labels of the pods of shard `shard` of `index`.
    pub fn for_shard(index: &str, shard: u32) -> BTreeMap<String, String> {
        let mut l = for_role(index, Role::Shard);
        l.insert(SHARD.to_string(), shard.to_string());
        l
    }

    /// The label selector (`kubectl -l` syntax) of the pods of one role of `index`, e.g. the
    /// shard pods a router watches: `quiver.dev/index=docs,quiver.dev/role=shard`.
    pub fn role_selector(index: &str, role: Role) -> String {
        format!("{INDEX}={index},{ROLE}={}", role.as_str())
    }
}

/// Annotation keys.
pub mod annotations {
    /// `quiver.dev/retrain` on a `VectorIndex`: a new value (any token, e.g. a ticket number or
    /// a timestamp) asks for one retrain; the version records it as trigger `retrain:<token>`.
    /// Removing it or setting the same value again does nothing.
    pub const RETRAIN: &str = "quiver.dev/retrain";
    /// `quiver.dev/rebalance` on a `VectorIndex`: a new value asks for one rebalance by the
    /// operator's current plan (`status.load.plan`) while `spec.rebalance.mode` is Manual; the
    /// version records it as trigger `rebalance:<token>`.
    pub const REBALANCE: &str = "quiver.dev/rebalance";
}

#[cfg(test)]
mod tests {
    use super::labels::{self, Role};

    #[test]
    fn role_values_round_trip() {
        for r in Role::ALL {
            assert_eq!(Role::parse(r.as_str()), Some(r));
            assert!(crate::names::is_dns1123_label(r.as_str()));
        }
        assert_eq!(Role::parse("Shard"), None);
    }

    #[test]
    fn label_sets() {
        let l = labels::for_shard("docs", 3);
        assert_eq!(l.get(labels::INDEX).map(String::as_str), Some("docs"));
        assert_eq!(l.get(labels::ROLE).map(String::as_str), Some("shard"));
        assert_eq!(l.get(labels::COMPONENT).map(String::as_str), Some("shard"));
        assert_eq!(l.get(labels::SHARD).map(String::as_str), Some("3"));
        assert_eq!(
            l.get(labels::MANAGED_BY_KEY).map(String::as_str),
            Some("quiver-operator")
        );
        assert_eq!(
            labels::role_selector("docs", Role::Shard),
            "quiver.dev/index=docs,quiver.dev/role=shard"
        );
    }
}
