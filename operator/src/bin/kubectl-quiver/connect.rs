//! kubectl's connection flags (`--kubeconfig`, `--context`, `--namespace`) and the client.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use quiver_api::VectorIndex;

/// Flags every command takes, before or after the command name.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct Global {
    /// Namespace of the index. Default: the namespace of the kubeconfig context.
    #[arg(short = 'n', long, global = true, value_name = "NAMESPACE")]
    pub namespace: Option<String>,

    /// The kubeconfig context to use. Default: the current context.
    #[arg(long, global = true, value_name = "NAME")]
    pub context: Option<String>,

    /// Path of the kubeconfig file. Default: $KUBECONFIG (a list of files is merged, as
    /// kubectl does), else ~/.kube/config, else the in-cluster service account.
    #[arg(long, global = true, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,

    /// State directory of a local cluster (quiver-local's --state-dir, e.g. .quiver-local):
    /// `query` reads the Service proxy's addresses from its services.json. Default: the
    /// kubeconfig's directory when it holds a services.json.
    #[arg(
        long,
        global = true,
        env = "QUIVER_LOCAL_STATE_DIR",
        value_name = "DIR"
    )]
    pub local_state_dir: Option<PathBuf>,
}

/// A client, the namespace commands act in, and where a local cluster keeps its state.
pub struct Kube {
    pub client: Client,
    pub namespace: String,
    pub local_state_dir: Option<PathBuf>,
}

impl Kube {
    pub fn indexes(&self) -> Api<VectorIndex> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// The index `name` of the namespace, or an error that says it does not exist there.
    pub async fn index(&self, name: &str) -> anyhow::Result<VectorIndex> {
        self.indexes()
            .get_opt(name)
            .await
            .with_context(|| format!("reading vectorindex {name} in namespace {}", self.namespace))?
            .ok_or_else(|| not_found(name, &self.namespace))
    }
}

pub fn not_found(name: &str, namespace: &str) -> anyhow::Error {
    anyhow!(
        "vectorindex \"{name}\" not found in namespace \"{namespace}\" (kubectl quiver status -n {namespace} lists them)"
    )
}

/// The client configuration kubectl would use for these flags.
pub async fn config(g: &Global) -> anyhow::Result<Config> {
    let options = KubeConfigOptions {
        context: g.context.clone(),
        cluster: None,
        user: None,
    };
    if let Some(path) = &g.kubeconfig {
        let kc = Kubeconfig::read_from(path)
            .with_context(|| format!("reading kubeconfig {}", path.display()))?;
        return Config::from_custom_kubeconfig(kc, &options)
            .await
            .with_context(|| format!("kubeconfig {}", path.display()));
    }
    match Config::from_kubeconfig(&options).await {
        Ok(c) => Ok(c),
        // No kubeconfig at all: in a pod, use its service account (as kubectl does).
        Err(e) if g.context.is_none() => Config::incluster().map_err(|ie| {
            anyhow!("no kubeconfig ({e}) and not in a cluster ({ie}); pass --kubeconfig")
        }),
        Err(e) => Err(anyhow!(e).context("loading the kubeconfig")),
    }
}

pub async fn connect(g: &Global) -> anyhow::Result<Kube> {
    let mut config = config(g).await?;
    config.connect_timeout = Some(std::time::Duration::from_secs(10));
    let namespace = g
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    let client = Client::try_from(config).context("building the API client")?;
    let local_state_dir = g.local_state_dir.clone().or_else(|| {
        let path = g.kubeconfig.clone().or_else(|| {
            let v = std::env::var_os("KUBECONFIG")?;
            let mut paths = std::env::split_paths(&v);
            let first = paths.next()?;
            paths.next().is_none().then_some(first)
        })?;
        inferred_state_dir(&path)
    });
    Ok(Kube {
        client,
        namespace,
        local_state_dir,
    })
}

/// A local cluster keeps its kubeconfig in its state directory, beside services.json.
pub fn inferred_state_dir(kubeconfig: &Path) -> Option<PathBuf> {
    let dir = kubeconfig.parent()?;
    dir.join("services.json")
        .is_file()
        .then(|| dir.to_path_buf())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_kubeconfig_beside_services_json_names_the_local_state_dir() {
        let dir = std::env::temp_dir().join(format!("kq-connect-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let kc = dir.join("kubeconfig");
        assert_eq!(inferred_state_dir(&kc), None);
        std::fs::write(dir.join("services.json"), "{}").unwrap();
        assert_eq!(inferred_state_dir(&kc), Some(dir.clone()));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn flags_pick_the_context_and_its_namespace() {
        let dir = std::env::temp_dir().join(format!("kq-kubeconfig-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config");
        std::fs::write(
            &path,
            r#"{"apiVersion": "v1", "kind": "Config",
                "clusters": [{"name": "a", "cluster": {"server": "https://127.0.0.1:1"}},
                             {"name": "b", "cluster": {"server": "https://127.0.0.1:2"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "one", "context": {"cluster": "a", "user": "u", "namespace": "ns1"}},
                             {"name": "two", "context": {"cluster": "b", "user": "u", "namespace": "ns2"}}],
                "current-context": "one"}"#,
        )
        .unwrap();
        let mut g = Global {
            kubeconfig: Some(path.clone()),
            ..Global::default()
        };
        let c = config(&g).await.unwrap();
        assert_eq!(c.default_namespace, "ns1");
        assert_eq!(c.cluster_url.port_u16(), Some(1));
        g.context = Some("two".into());
        let c = config(&g).await.unwrap();
        assert_eq!(c.default_namespace, "ns2");
        assert_eq!(c.cluster_url.port_u16(), Some(2));
        g.context = Some("three".into());
        assert!(config(&g).await.is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
