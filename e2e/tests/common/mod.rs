//! Test harness: a cluster reached only through a kubeconfig. By default the stand-in runs
//! in-process; with QUIVER_E2E_KUBECONFIG the tests use that cluster instead.
#![allow(dead_code)]

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, PostParams};
use kube::{Client, ResourceExt};
use quiver_e2e::local::{Local, LocalConfig};
use serde_json::json;

pub struct Cluster {
    pub client: Client,
    pub external: bool,
    pub local: Option<Local>,
    pub dir: PathBuf,
}

pub use quiver_e2e::testing::unique;

impl Cluster {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut LocalConfig)) -> Self {
        let dir = std::env::temp_dir().join(unique(&format!("quiver-e2e-{}", std::process::id())));
        if let Ok(path) = std::env::var("QUIVER_E2E_KUBECONFIG") {
            let client = quiver_e2e::local::client_for(std::path::Path::new(&path))
                .await
                .expect("client for QUIVER_E2E_KUBECONFIG");
            return Self {
                client,
                external: true,
                local: None,
                dir,
            };
        }
        let mut cfg = LocalConfig::new(dir.clone());
        cfg.kubelet = false;
        cfg.history = 200;
        cfg.bookmark_interval = Duration::from_millis(300);
        tweak(&mut cfg);
        let local = Local::start(cfg).await.expect("start local cluster");
        let client = quiver_e2e::local::client_for(&local.server.kubeconfig)
            .await
            .expect("client");
        Self {
            client,
            external: false,
            local: Some(local),
            dir,
        }
    }

    /// The client configuration the tests use (for clients with other credentials).
    pub async fn config(&self) -> kube::Config {
        let path = match (&self.local, std::env::var("QUIVER_E2E_KUBECONFIG")) {
            (Some(l), _) => l.server.kubeconfig.clone(),
            (None, Ok(p)) => PathBuf::from(p),
            (None, Err(_)) => panic!("no cluster"),
        };
        quiver_e2e::local::config_for(&path)
            .await
            .expect("kubeconfig")
    }

    /// A fresh namespace, deleted when the guard drops (so runs against a real cluster clean up).
    pub async fn namespace(&self, prefix: &str) -> Ns {
        let name = unique(prefix);
        let api: Api<Namespace> = Api::all(self.client.clone());
        let ns: Namespace =
            serde_json::from_value(json!({"metadata": {"name": name}})).expect("ns");
        api.create(&PostParams::default(), &ns)
            .await
            .expect("create namespace");
        wait_default_account(&self.client, &name).await;
        Ns {
            name,
            client: self.client.clone(),
        }
    }

    pub async fn stop(self) {
        if let Some(l) = self.local {
            l.stop().await;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub struct Ns {
    pub name: String,
    client: Client,
}

impl Drop for Ns {
    fn drop(&mut self) {
        let client = self.client.clone();
        let name = self.name.clone();
        // Drop cannot await; a short-lived runtime on its own thread does the delete.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("rt");
            rt.block_on(async move {
                let api: Api<Namespace> = Api::all(client);
                let _ = tokio::time::timeout(
                    Duration::from_secs(5),
                    api.delete(&name, &DeleteParams::default()),
                )
                .await;
            });
        })
        .join();
    }
}

/// Pods are refused until a new namespace's `default` ServiceAccount exists.
pub async fn wait_default_account(client: &Client, ns: &str) {
    quiver_e2e::testing::wait_default_account(client, ns)
        .await
        .expect("default ServiceAccount");
}

/// Bounded test body: a hang fails the test instead of stalling the suite.
pub async fn bounded<F: Future<Output = ()>>(secs: u64, f: F) {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .expect("test timed out");
}

/// Polls `check` until it returns Some, or panics after `secs`.
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn api_err(e: kube::Error) -> (u16, String) {
    match e {
        kube::Error::Api(s) => (s.code, s.reason.clone()),
        other => panic!("expected an API error, got {other}"),
    }
}

pub fn names<K: ResourceExt>(items: &[K]) -> Vec<String> {
    let mut v: Vec<String> = items.iter().map(|o| o.name_any()).collect();
    v.sort();
    v
}
