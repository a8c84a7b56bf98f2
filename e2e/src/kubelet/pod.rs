//! One pod's lifecycle on this node: volumes, init and main containers, restarts with
//! back-off, probes, status, and graceful termination on deletion.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, ServiceAccount};
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use serde_json::{Value, json};
use tokio::process::Child;
use tokio::sync::watch;
use tokio::time::Instant;

use super::probes::{ProbeState, Target};
use super::process::{self, PodDirs, Refs};
use super::{IpPool, KubeletConfig, KubeletError};
use crate::controllers::now;

struct Container {
    spec: Value,
    name: String,
    init: bool,
    child: Option<Child>,
    started_at: String,
    restart_count: i64,
    last_term: Option<Value>,
    /// Terminated for good (will not restart).
    done: Option<Value>,
    waiting: Option<(String, String)>,
    next_start: Instant,
    backoff: Duration,
    startup: Option<ProbeState>,
    readiness: Option<ProbeState>,
    liveness: Option<ProbeState>,
    /// How the running process was started (exec probes run beside it the same way).
    process: Option<process::Spec>,
}

impl Container {
    fn new(spec: &Value, init: bool, backoff: Duration) -> Self {
        Self {
            name: spec["name"].as_str().unwrap_or("container").to_string(),
            spec: spec.clone(),
            init,
            child: None,
            started_at: String::new(),
            restart_count: 0,
            last_term: None,
            done: None,
            waiting: Some(("ContainerCreating".into(), String::new())),
            next_start: Instant::now(),
            backoff,
            startup: None,
            readiness: None,
            liveness: None,
            process: None,
        }
    }

    fn started(&self) -> bool {
        self.child.is_some() && self.startup.as_ref().is_none_or(|p| p.result == Some(true))
    }

    fn ready(&self) -> bool {
        self.started()
            && self
                .readiness
                .as_ref()
                .is_none_or(|p| p.result == Some(true))
    }

    fn completed_ok(&self) -> bool {
        self.done.as_ref().is_some_and(|t| t["exitCode"] == 0)
    }

    fn status(&self) -> Value {
        let state = if self.child.is_some() {
            json!({"running": {"startedAt": self.started_at}})
        } else if let Some(t) = &self.done {
            json!({"terminated": t})
        } else if let Some((reason, message)) = &self.waiting {
            let mut w = json!({"reason": reason});
            if !message.is_empty() {
                w["message"] = json!(message);
            }
            json!({"waiting": w})
        } else {
            json!({"waiting": {"reason": "ContainerCreating"}})
        };
        let mut s = json!({
            "name": self.name,
            "image": self.spec["image"],
            "imageID": format!("quiver-process://{}", self.spec["image"].as_str().unwrap_or_default()),
            "ready": self.ready(),
            "started": self.started(),
            "restartCount": self.restart_count,
            "state": state,
            "lastState": {},
        });
        if let Some(t) = &self.last_term {
            s["lastState"] = json!({"terminated": t});
        }
        if let Some(pid) = self.child.as_ref().and_then(Child::id) {
            s["containerID"] = json!(format!("quiver-process://{pid}"));
        }
        s
    }
}

pub struct PodWorker {
    client: Client,
    cfg: Arc<KubeletConfig>,
    rx: watch::Receiver<Value>,
    pod: Value,
    ip: Ipv4Addr,
    dirs: PodDirs,
    containers: Vec<Container>,
    volumes: Option<HashMap<String, PathBuf>>,
    refs: Refs,
    /// When projected tokens are due for renewal.
    refresh_at: Option<Instant>,
    start_time: String,
    last_status: Value,
}

impl PodWorker {
    pub fn new(
        client: Client,
        cfg: Arc<KubeletConfig>,
        ips: Arc<IpPool>,
        rx: watch::Receiver<Value>,
    ) -> Self {
        let pod = rx.borrow().clone();
        let ip = pod["status"]["podIP"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| ips.allocate());
        let dirs = PodDirs::new(&cfg.root, &pod);
        let backoff = cfg.backoff_base;
        let mut containers: Vec<Container> = pod["spec"]["initContainers"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|c| Container::new(c, true, backoff))
            .collect();
        containers.extend(
            pod["spec"]["containers"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .map(|c| Container::new(c, false, backoff)),
        );
        let start_time = pod["status"]["startTime"]
            .as_str()
            .map(String::from)
            .unwrap_or_else(now);
        Self {
            client,
            cfg,
            rx,
            pod,
            ip,
            dirs,
            containers,
            volumes: None,
            refs: Refs::default(),
            refresh_at: None,
            start_time,
            last_status: Value::Null,
        }
    }

    fn ns(&self) -> String {
        self.pod["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_string()
    }

    fn name(&self) -> String {
        self.pod["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    pub async fn run(mut self) {
        loop {
            self.pod = self.rx.borrow_and_update().clone();
            // The downward API sees the pod IP before the first status write.
            self.pod["status"]["podIP"] = json!(self.ip.to_string());
            if !self.pod["metadata"]["deletionTimestamp"].is_null() {
                self.terminate().await;
                return;
            }
            if let Err(e) = self.step().await {
                tracing::debug!(pod = %self.name(), error = %e, "pod step failed");
            }
            tokio::select! {
                _ = self.rx.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    }

    async fn load_refs(&mut self) -> Result<(), KubeletError> {
        let ns = self.ns();
        let cms: Api<ConfigMap> = Api::namespaced(self.client.clone(), &ns);
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &ns);
        let spec = &self.pod["spec"];
        let mut cm_names = Vec::new();
        let mut secret_names = Vec::new();
        let mut token_sources = Vec::new();
        for v in spec["volumes"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            cm_names.extend(v["configMap"]["name"].as_str().map(String::from));
            secret_names.extend(v["secret"]["secretName"].as_str().map(String::from));
            for src in v["projected"]["sources"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
            {
                cm_names.extend(src["configMap"]["name"].as_str().map(String::from));
                secret_names.extend(src["secret"]["name"].as_str().map(String::from));
                if src["serviceAccountToken"].is_object() {
                    token_sources.push((
                        v["name"].as_str().unwrap_or_default().to_string(),
                        src["serviceAccountToken"].clone(),
                    ));
                }
            }
        }
        let all: Vec<&Value> = spec["containers"]
            .as_array()
            .into_iter()
            .chain(spec["initContainers"].as_array())
            .flatten()
            .collect();
        for c in all {
            for e in c["env"].as_array().map(Vec::as_slice).unwrap_or_default() {
                cm_names.extend(
                    e["valueFrom"]["configMapKeyRef"]["name"]
                        .as_str()
                        .map(String::from),
                );
                secret_names.extend(
                    e["valueFrom"]["secretKeyRef"]["name"]
                        .as_str()
                        .map(String::from),
                );
            }
            for e in c["envFrom"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
            {
                cm_names.extend(e["configMapRef"]["name"].as_str().map(String::from));
                secret_names.extend(e["secretRef"]["name"].as_str().map(String::from));
            }
        }
        let mut refs = Refs::default();
        let mut shortest = None::<i64>;
        for (volume, src) in token_sources {
            let (token, ttl) = self.request_token(&src).await?;
            shortest = Some(shortest.map_or(ttl, |s| s.min(ttl)));
            let path = src["path"].as_str().unwrap_or("token");
            refs.tokens
                .insert(format!("{volume}/{path}"), token.into_bytes());
        }
        // As the kubelet: a projected token is renewed once 80 % of its lifetime has passed.
        self.refresh_at =
            shortest.map(|ttl| Instant::now() + Duration::from_secs((ttl.max(1) as u64) * 8 / 10));
        refs.service_env = self.cfg.service_env();
        for n in cm_names {
            let cm = cms.get(&n).await?;
            refs.add_config_map(&n, &serde_json::to_value(cm)?);
        }
        for n in secret_names {
            let s = secrets.get(&n).await?;
            refs.add_secret(&n, &serde_json::to_value(s)?);
        }
        self.refs = refs;
        Ok(())
    }

    /// A token for the pod's service account, bound to the pod, as a projected
    /// `serviceAccountToken` source asks (audience, expirationSeconds); with its lifetime.
    async fn request_token(&self, src: &Value) -> Result<(String, i64), KubeletError> {
        let sa = self.pod["spec"]["serviceAccountName"]
            .as_str()
            .filter(|s| !s.is_empty())
            .unwrap_or("default");
        let mut spec = json!({
            "expirationSeconds": src["expirationSeconds"].as_i64().unwrap_or(3600),
            "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": self.name(), "uid": self.pod["metadata"]["uid"]},
        });
        if let Some(aud) = src["audience"].as_str().filter(|a| !a.is_empty()) {
            spec["audiences"] = json!([aud]);
        }
        let body =
            json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec});
        let api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), &self.ns());
        let tr: Value = api
            .create_subresource("token", sa, &PostParams::default(), &body)
            .await?;
        let token = tr["status"]["token"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let ttl = tr["spec"]["expirationSeconds"]
            .as_i64()
            .unwrap_or_else(|| spec["expirationSeconds"].as_i64().unwrap_or(3600));
        Ok((token, ttl))
    }

    fn restart_policy(&self) -> &str {
        self.pod["spec"]["restartPolicy"]
            .as_str()
            .unwrap_or("Always")
    }

    async fn step(&mut self) -> Result<(), KubeletError> {
        if self.volumes.is_some() && self.refresh_at.is_some_and(|t| Instant::now() >= t) {
            // Renew tokens (and re-read the ConfigMaps and Secrets of volumes, as a kubelet
            // does periodically); on failure the old files stay and it is tried again soon.
            match self.load_refs().await {
                Ok(()) => {
                    self.volumes =
                        Some(process::prepare_volumes(&self.pod, &self.dirs, &self.refs)?);
                }
                Err(e) => {
                    tracing::warn!(pod = %self.name(), error = %e, "renewing projected volumes failed");
                    self.refresh_at = Some(Instant::now() + Duration::from_secs(10));
                }
            }
        }
        if self.volumes.is_none() {
            if let Err(e) = self.load_refs().await {
                for c in &mut self.containers {
                    c.waiting = Some(("CreateContainerConfigError".into(), e.to_string()));
                }
                self.write_status().await?;
                tokio::time::sleep(Duration::from_secs(1)).await;
                return Ok(());
            }
            self.volumes = Some(process::prepare_volumes(&self.pod, &self.dirs, &self.refs)?);
        }
        let policy = self.restart_policy().to_string();
        let n_init = self.containers.iter().filter(|c| c.init).count();
        // Init containers run one at a time, each to success, before the main containers.
        let init_pending = self.containers[..n_init]
            .iter()
            .position(|c| !c.completed_ok());
        let runnable: Vec<usize> = match init_pending {
            Some(i) => vec![i],
            None => (n_init..self.containers.len()).collect(),
        };
        let pod_failed = self.containers[..n_init]
            .iter()
            .any(|c| c.done.as_ref().is_some_and(|t| t["exitCode"] != 0));
        for i in runnable {
            if pod_failed {
                break;
            }
            self.reap(i, &policy);
            self.start_if_due(i);
            self.probe(i, &policy).await;
        }
        self.write_status().await
    }

    fn start_if_due(&mut self, i: usize) {
        let c = &mut self.containers[i];
        if c.child.is_some() || c.done.is_some() || Instant::now() < c.next_start {
            return;
        }
        let Some(volumes) = &self.volumes else { return };
        let spec = match process::build(
            &self.pod,
            &c.spec,
            &self.cfg.images,
            &self.dirs,
            volumes,
            &self.refs,
        ) {
            Ok(mut s) => {
                if !self.cfg.bind_mounts {
                    s.binds.clear();
                }
                s
            }
            Err((reason, message)) => {
                c.waiting = Some((reason, message));
                c.next_start = Instant::now() + Duration::from_secs(5);
                return;
            }
        };
        match process::spawn(&spec) {
            Ok(child) => {
                tracing::info!(pod = %self.pod["metadata"]["name"], container = %c.name, program = %spec.program.display(), "started");
                c.child = Some(child);
                c.started_at = now();
                c.waiting = None;
                let t = Instant::now();
                c.startup = ProbeState::new(&c.spec["startupProbe"], t);
                c.readiness = ProbeState::new(&c.spec["readinessProbe"], t);
                c.liveness = ProbeState::new(&c.spec["livenessProbe"], t);
                c.process = Some(spec);
            }
            Err(e) => {
                c.waiting = Some((
                    "RunContainerError".into(),
                    format!("cannot start {}: {e}", spec.program.display()),
                ));
                c.next_start = Instant::now() + c.backoff;
            }
        }
    }

    fn termination_message(&self, c: &Container, code: i32) -> Option<String> {
        let path = c.spec["terminationMessagePath"]
            .as_str()
            .unwrap_or("/dev/termination-log");
        let mapped = self
            .dirs
            .instance
            .join("rootfs")
            .join(path.trim_start_matches('/'));
        if let Ok(m) = std::fs::read_to_string(mapped)
            && !m.is_empty()
        {
            return Some(m.chars().take(4096).collect());
        }
        if code != 0 && c.spec["terminationMessagePolicy"].as_str() == Some("FallbackToLogsOnError")
        {
            let log = std::fs::read_to_string(self.dirs.log(&c.name)).unwrap_or_default();
            let lines: Vec<&str> = log.lines().rev().take(80).collect();
            let tail: Vec<&str> = lines.into_iter().rev().collect();
            let s = tail.join("\n");
            let start = s.len().saturating_sub(2048);
            return Some(s.get(start..).unwrap_or_default().to_string());
        }
        None
    }

    /// Notices a container that exited and decides whether it restarts.
    fn reap(&mut self, i: usize, policy: &str) {
        let exited = match self.containers[i].child.as_mut().map(Child::try_wait) {
            Some(Ok(Some(status))) => status,
            _ => return,
        };
        use std::os::unix::process::ExitStatusExt;
        let code = exited
            .code()
            .unwrap_or_else(|| 128 + exited.signal().unwrap_or(9));
        let message = self.termination_message(&self.containers[i], code);
        let c = &mut self.containers[i];
        let mut term = json!({
            "exitCode": code,
            "reason": if code == 0 { "Completed" } else { "Error" },
            "startedAt": c.started_at,
            "finishedAt": now(),
            "containerID": format!("quiver-process://{}", c.child.as_ref().and_then(Child::id).unwrap_or(0)),
        });
        if let Some(sig) = exited.signal() {
            term["signal"] = json!(sig);
        }
        if let Some(m) = message {
            term["message"] = json!(m);
        }
        tracing::info!(pod = %self.pod["metadata"]["name"], container = %c.name, code, "container exited");
        c.child = None;
        let restart = if c.init {
            code != 0 && policy != "Never"
        } else {
            policy == "Always" || (policy == "OnFailure" && code != 0)
        };
        if restart {
            c.restart_count += 1;
            c.last_term = Some(term);
            c.waiting = Some((
                "CrashLoopBackOff".into(),
                format!("back-off {:?} restarting failed container", c.backoff),
            ));
            c.next_start = Instant::now() + c.backoff;
            c.backoff = (c.backoff * 2).min(self.cfg.backoff_max);
        } else {
            c.done = Some(term);
        }
    }

    async fn probe(&mut self, i: usize, policy: &str) {
        let ip = self.ip;
        let c = &mut self.containers[i];
        if c.child.is_none() {
            return;
        }
        let target = Target {
            ip,
            container: &c.spec,
            process: c.process.as_ref(),
        };
        if let Some(p) = c.startup.as_mut()
            && p.result != Some(true)
        {
            p.tick(&target).await;
            if p.result == Some(false) {
                self.kill_for_restart(i, policy, "startup probe failed")
                    .await;
            }
            return;
        }
        if let Some(p) = c.readiness.as_mut() {
            p.tick(&target).await;
        }
        if let Some(p) = c.liveness.as_mut() {
            p.tick(&target).await;
            if p.result == Some(false) {
                self.kill_for_restart(i, policy, "liveness probe failed")
                    .await;
            }
        }
    }

    async fn kill_for_restart(&mut self, i: usize, policy: &str, why: &str) {
        let grace = self.pod["spec"]["terminationGracePeriodSeconds"]
            .as_u64()
            .unwrap_or(30);
        tracing::info!(pod = %self.pod["metadata"]["name"], container = %self.containers[i].name, why, "killing container");
        if let Some(child) = self.containers[i].child.as_mut() {
            stop_child(child, Duration::from_secs(grace)).await;
        }
        self.reap(i, policy);
    }

    fn phase(&self) -> &'static str {
        let main: Vec<&Container> = self.containers.iter().filter(|c| !c.init).collect();
        if self
            .containers
            .iter()
            .any(|c| c.init && c.done.as_ref().is_some_and(|t| t["exitCode"] != 0))
        {
            return "Failed";
        }
        if !main.is_empty() && main.iter().all(|c| c.done.is_some()) {
            return if main.iter().all(|c| c.completed_ok()) {
                "Succeeded"
            } else {
                "Failed"
            };
        }
        let inits_done = self
            .containers
            .iter()
            .filter(|c| c.init)
            .all(Container::completed_ok);
        if inits_done
            && main
                .iter()
                .any(|c| c.child.is_some() || c.restart_count > 0 || c.done.is_some())
        {
            return "Running";
        }
        "Pending"
    }

    /// Readiness gates (`spec.readinessGates`) whose condition is not `True` in the pod's
    /// status: someone else owns those conditions; the pod is Ready only when all are True.
    fn unmet_gates(&self) -> Vec<String> {
        let conditions = self.pod["status"]["conditions"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        self.pod["spec"]["readinessGates"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .filter_map(|g| g["conditionType"].as_str())
            .filter(|ty| {
                !conditions
                    .iter()
                    .any(|c| c["type"] == *ty && c["status"] == "True")
            })
            .map(String::from)
            .collect()
    }

    async fn write_status(&mut self) -> Result<(), KubeletError> {
        let phase = self.phase();
        let main: Vec<&Container> = self.containers.iter().filter(|c| !c.init).collect();
        let initialized = self
            .containers
            .iter()
            .filter(|c| c.init)
            .all(Container::completed_ok);
        let containers_ready = phase == "Running" && main.iter().all(|c| c.ready());
        let unmet = self.unmet_gates();
        let ready = containers_ready && unmet.is_empty();
        // A condition's lastTransitionTime moves only when its status flips.
        let previous = self.last_status["conditions"].clone();
        let cond = |ty: &str, ok: bool| {
            let status = if ok { "True" } else { "False" };
            let since = previous
                .as_array()
                .and_then(|cs| cs.iter().find(|c| c["type"] == ty))
                .filter(|c| c["status"] == status)
                .map(|c| c["lastTransitionTime"].clone())
                .unwrap_or_else(|| json!(now()));
            json!({"type": ty, "status": status, "lastProbeTime": null, "lastTransitionTime": since})
        };
        let mut ready_cond = cond("Ready", ready);
        if containers_ready && !unmet.is_empty() {
            ready_cond["reason"] = json!("ReadinessGatesNotReady");
            ready_cond["message"] = json!(format!(
                "the status of pod readiness gate {:?} is not \"True\"",
                unmet[0]
            ));
        }
        let status = json!({
            "phase": phase,
            // Only the conditions a kubelet owns: others (readiness gates) belong to whoever
            // set them, and the strategic merge below leaves them alone.
            "conditions": [cond("PodScheduled", true), cond("Initialized", initialized), cond("ContainersReady", containers_ready), ready_cond],
            "hostIP": "127.0.0.1",
            "hostIPs": [{"ip": "127.0.0.1"}],
            "podIP": self.ip.to_string(),
            "podIPs": [{"ip": self.ip.to_string()}],
            "startTime": self.start_time,
            "qosClass": "BestEffort",
            "initContainerStatuses": self.containers.iter().filter(|c| c.init).map(Container::status).collect::<Vec<_>>(),
            "containerStatuses": main.iter().map(|c| c.status()).collect::<Vec<_>>(),
        });
        // Only write when something changed.
        if status == self.last_status {
            return Ok(());
        }
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &self.ns());
        // Strategic merge, as a kubelet patches: `conditions` merge by type.
        api.patch_status(
            &self.name(),
            &PatchParams::default(),
            &Patch::Strategic(json!({"status": status})),
        )
        .await?;
        self.last_status = status;
        Ok(())
    }

    /// SIGTERM, wait the grace period, SIGKILL; then finalize the deletion.
    async fn terminate(&mut self) {
        let grace = self.pod["metadata"]["deletionGracePeriodSeconds"]
            .as_u64()
            .or(self.pod["spec"]["terminationGracePeriodSeconds"].as_u64())
            .unwrap_or(30);
        let deadline = Duration::from_secs(grace);
        let stops = self
            .containers
            .iter_mut()
            .filter_map(|c| c.child.as_mut())
            .map(|child| stop_child(child, deadline));
        futures::future::join_all(stops).await;
        for i in 0..self.containers.len() {
            // Stopped for deletion: final, not a restart, whatever the restart policy.
            self.reap(i, "Never");
            let c = &mut self.containers[i];
            if c.done.is_none() {
                c.done = c.last_term.take();
            }
        }
        let _ = self.write_status().await;
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &self.ns());
        let uid = self.pod["metadata"]["uid"].as_str().map(String::from);
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid,
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match api.delete(&self.name(), &dp).await {
            Ok(_) => tracing::info!(pod = %self.name(), "pod terminated and deleted"),
            Err(e) => tracing::debug!(pod = %self.name(), error = %e, "final delete failed"),
        }
    }
}

async fn stop_child(child: &mut Child, grace: Duration) {
    process::signal(child, libc::SIGTERM);
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        process::signal(child, libc::SIGKILL);
        let _ = child.wait().await;
    }
}
