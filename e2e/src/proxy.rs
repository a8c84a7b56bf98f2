//! The Service proxy a node runs (kube-proxy's part): for every port of every ClusterIP
//! Service it listens on `clusterIP:port` and forwards each TCP connection to one of the
//! Service's ready endpoints (from its EndpointSlices), round robin; a refused connect tries
//! the next endpoint, and with no ready endpoint the connection is closed at once. Listeners
//! follow the watches on Services and EndpointSlices, and go when their Service goes.
//!
//! Where the clusterIP is not a loopback address (a real API server allocated it from its own
//! range), or cannot be bound here, the proxy listens on an address of its own from
//! 127.97.0.0/16 instead and reports it in `<state-dir>/services.json`
//! ("namespace/name" → clusterIP, local address, ports). It never writes to the Service.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Client;
use kube::api::{Api, ListParams};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::controllers::endpoints::SERVICE_NAME_LABEL;
use crate::controllers::{AbortOnDrop, ControllerError, drive, scoped_api, to_values, trigger_on};

/// The file in the state directory where the proxy reports its local addresses.
pub const STATE_FILE: &str = "services.json";
const LOCAL_BASE: u32 = 0x7f61_0000;
const LOCAL_SIZE: u32 = 1 << 16;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("service {0} not found")]
    NotFound(String),
    #[error("service {0} is headless (clusterIP: None): clients reach its pods directly")]
    Headless(String),
    #[error("service {0} has no cluster IP (type {1})")]
    NoClusterIp(String, String),
    #[error(
        "service {0} has cluster IP {1}, which is not local, and no proxy has reported an address for it in {2}"
    )]
    NotProxied(String, String, String),
    #[error("reading {0}: {1}")]
    State(String, String),
}

#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Where [`STATE_FILE`] is written.
    pub state_dir: PathBuf,
    /// Only serve the Services of this namespace (a test node beside others on one
    /// machine); every namespace when None, as kube-proxy does.
    pub namespace: Option<String>,
}

impl ProxyConfig {
    pub fn new(state_dir: PathBuf) -> Self {
        Self {
            state_dir,
            namespace: None,
        }
    }
}

/// One Service as the proxy serves it, as written to the state file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceEntry {
    #[serde(rename = "clusterIP")]
    pub cluster_ip: String,
    /// The address the proxy listens on (the clusterIP itself when it could bind it).
    pub address: String,
    pub ports: Vec<PortEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortEntry {
    pub name: String,
    pub port: u16,
    /// Where a client on this machine connects for this port.
    pub local: String,
}

/// The endpoints of one listener and the round-robin position.
#[derive(Debug, Default)]
pub struct Backends {
    addrs: Vec<SocketAddr>,
    next: usize,
}

impl Backends {
    pub fn set(&mut self, addrs: Vec<SocketAddr>) {
        if addrs != self.addrs {
            self.addrs = addrs;
            self.next = 0;
        }
    }

    /// The endpoints in the order one connection tries them: the round-robin choice first,
    /// then the others (a refused connect goes on to the next). Advances the choice.
    pub fn order(&mut self) -> Vec<SocketAddr> {
        let n = self.addrs.len();
        if n == 0 {
            return Vec::new();
        }
        let start = self.next % n;
        self.next = (start + 1) % n;
        (0..n).map(|i| self.addrs[(start + i) % n]).collect()
    }
}

/// The ready endpoints (conditions.ready true or unset) of the Service port named
/// `port_name`, from the Service's EndpointSlices, sorted and without duplicates.
pub fn ready_backends(port_name: &str, slices: &[&Value]) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for s in slices {
        if s["addressType"].as_str().is_some_and(|t| t != "IPv4") {
            continue;
        }
        let port = s["ports"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .find(|p| p["name"].as_str().unwrap_or_default() == port_name)
            .and_then(|p| p["port"].as_u64())
            .and_then(|p| u16::try_from(p).ok());
        let Some(port) = port else { continue };
        for ep in s["endpoints"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            if ep["conditions"]["ready"].as_bool() == Some(false) {
                continue;
            }
            for a in ep["addresses"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
            {
                if let Some(ip) = a.as_str().and_then(|a| a.parse::<IpAddr>().ok()) {
                    out.push(SocketAddr::new(ip, port));
                }
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

struct Listener {
    cluster_ip: String,
    local: SocketAddr,
    backends: Arc<Mutex<Backends>>,
    _task: AbortOnDrop,
}

#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Key {
    ns: String,
    name: String,
    port: u16,
}

struct State {
    cfg: ProxyConfig,
    listeners: HashMap<Key, Listener>,
    /// Per Service, the address of our own used when the clusterIP is not usable here.
    local_ips: HashMap<(String, String), Ipv4Addr>,
    written: Option<BTreeMap<String, ServiceEntry>>,
}

/// Runs the proxy until the task is dropped (listeners close with it).
pub async fn run(client: Client, cfg: ProxyConfig) {
    let (tx, rx) = mpsc::channel(1);
    let ns = cfg.namespace.clone();
    let _watches = [
        AbortOnDrop(trigger_on(
            scoped_api::<Service>(&client, ns.as_deref()),
            tx.clone(),
        )),
        AbortOnDrop(trigger_on(
            scoped_api::<EndpointSlice>(&client, ns.as_deref()),
            tx,
        )),
    ];
    let state = Arc::new(tokio::sync::Mutex::new(State {
        cfg,
        listeners: HashMap::new(),
        local_ips: HashMap::new(),
        written: None,
    }));
    drive("proxy", rx, Duration::from_secs(30), || {
        let client = client.clone();
        let state = state.clone();
        async move { state.lock().await.pass(&client).await }
    })
    .await;
}

fn ns_name(v: &Value) -> (String, String) {
    (
        v["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        v["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

fn pick_local(taken: &HashMap<(String, String), Ipv4Addr>) -> Ipv4Addr {
    let start = (crate::apiserver::time::next_random() % u64::from(LOCAL_SIZE - 2)) as u32;
    (0..LOCAL_SIZE - 2)
        .map(|i| Ipv4Addr::from(LOCAL_BASE + 1 + (start + i) % (LOCAL_SIZE - 2)))
        .find(|ip| !taken.values().any(|t| t == ip))
        .unwrap_or(Ipv4Addr::from(LOCAL_BASE + 1))
}

impl State {
    async fn pass(&mut self, client: &Client) -> Result<(), ControllerError> {
        let list = ListParams::default();
        let ns = self.cfg.namespace.clone();
        let services = to_values(
            scoped_api::<Service>(client, ns.as_deref())
                .list(&list)
                .await?
                .items,
        )?;
        let slices = to_values(
            scoped_api::<EndpointSlice>(client, ns.as_deref())
                .list(&ListParams::default().labels(SERVICE_NAME_LABEL))
                .await?
                .items,
        )?;
        let mut by_service: HashMap<(String, String), Vec<&Value>> = HashMap::new();
        for s in &slices {
            let ns = s["metadata"]["namespace"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let svc = s["metadata"]["labels"][SERVICE_NAME_LABEL]
                .as_str()
                .unwrap_or_default()
                .to_string();
            by_service.entry((ns, svc)).or_default().push(s);
        }
        let mut wanted: HashMap<Key, ()> = HashMap::new();
        let mut report = BTreeMap::new();
        for svc in &services {
            let id = ns_name(svc);
            let spec = &svc["spec"];
            let Some(cluster_ip) = spec["clusterIP"]
                .as_str()
                .filter(|ip| ip.parse::<Ipv4Addr>().is_ok())
            else {
                continue;
            };
            if spec["type"].as_str() == Some("ExternalName") {
                continue;
            }
            let svc_slices = by_service.get(&id).map(Vec::as_slice).unwrap_or_default();
            let mut entry = ServiceEntry {
                cluster_ip: cluster_ip.to_string(),
                address: cluster_ip.to_string(),
                ports: Vec::new(),
            };
            for p in spec["ports"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
            {
                if p["protocol"].as_str().unwrap_or("TCP") != "TCP" {
                    continue;
                }
                let Some(port) = p["port"].as_u64().and_then(|p| u16::try_from(p).ok()) else {
                    continue;
                };
                let port_name = p["name"].as_str().unwrap_or_default().to_string();
                let key = Key {
                    ns: id.0.clone(),
                    name: id.1.clone(),
                    port,
                };
                let backends = ready_backends(&port_name, svc_slices);
                let stale = self
                    .listeners
                    .get(&key)
                    .is_some_and(|l| l.cluster_ip != cluster_ip);
                if stale {
                    self.listeners.remove(&key);
                }
                if !self.listeners.contains_key(&key) {
                    match self.listen(&id, cluster_ip, port).await {
                        Some(l) => {
                            self.listeners.insert(key.clone(), l);
                        }
                        None => continue,
                    }
                }
                if let Some(l) = self.listeners.get(&key) {
                    if let Ok(mut b) = l.backends.lock() {
                        b.set(backends);
                    }
                    if l.local.ip().to_string() != cluster_ip {
                        entry.address = l.local.ip().to_string();
                    }
                    entry.ports.push(PortEntry {
                        name: port_name,
                        port,
                        local: l.local.to_string(),
                    });
                }
                wanted.insert(key, ());
            }
            if !entry.ports.is_empty() {
                report.insert(format!("{}/{}", id.0, id.1), entry);
            }
        }
        self.listeners.retain(|k, l| {
            let keep = wanted.contains_key(k);
            if !keep {
                tracing::info!(namespace = %k.ns, service = %k.name, port = k.port, local = %l.local, "service proxy listener closed");
            }
            keep
        });
        let live: std::collections::HashSet<(String, String)> =
            services.iter().map(ns_name).collect();
        self.local_ips.retain(|k, _| live.contains(k));
        if self.written.as_ref() != Some(&report) {
            self.write_state(&report);
            self.written = Some(report);
        }
        Ok(())
    }

    fn write_state(&self, report: &BTreeMap<String, ServiceEntry>) {
        let path = self.cfg.state_dir.join(STATE_FILE);
        let tmp = self.cfg.state_dir.join(format!("{STATE_FILE}.tmp"));
        let body = serde_json::to_vec_pretty(report).unwrap_or_default();
        let res = std::fs::create_dir_all(&self.cfg.state_dir)
            .and_then(|()| std::fs::write(&tmp, body))
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = res {
            tracing::warn!(path = %path.display(), error = %e, "could not write the service proxy state");
        }
    }

    /// Binds the clusterIP when it is loopback and free, else an address of our own (same
    /// port, or any port when that one cannot be bound either).
    async fn listen(
        &mut self,
        id: &(String, String),
        cluster_ip: &str,
        port: u16,
    ) -> Option<Listener> {
        let ip: Ipv4Addr = cluster_ip.parse().ok()?;
        let mut bound = None;
        if ip.is_loopback() {
            match TcpListener::bind((ip, port)).await {
                Ok(l) => bound = Some(l),
                Err(e) => {
                    tracing::warn!(namespace = %id.0, service = %id.1, cluster_ip, port, error = %e,
                    "cannot listen on the cluster IP; using a local address of the proxy's own")
                }
            }
        }
        if bound.is_none() {
            let local = match self.local_ips.get(id) {
                Some(a) => *a,
                None => {
                    let a = pick_local(&self.local_ips);
                    self.local_ips.insert(id.clone(), a);
                    a
                }
            };
            for p in [port, 0] {
                match TcpListener::bind((local, p)).await {
                    Ok(l) => {
                        bound = Some(l);
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(namespace = %id.0, service = %id.1, local = %local, port = p, error = %e, "cannot listen")
                    }
                }
            }
        }
        let listener = bound?;
        let local = listener.local_addr().ok()?;
        tracing::info!(namespace = %id.0, service = %id.1, cluster_ip, port, local = %local, "service proxy listening");
        let backends = Arc::new(Mutex::new(Backends::default()));
        let task = tokio::spawn(accept_loop(listener, backends.clone()));
        Some(Listener {
            cluster_ip: cluster_ip.to_string(),
            local,
            backends,
            _task: AbortOnDrop(task),
        })
    }
}

async fn accept_loop(listener: TcpListener, backends: Arc<Mutex<Backends>>) {
    loop {
        let (conn, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let order = backends.lock().map(|mut b| b.order()).unwrap_or_default();
        tokio::spawn(forward(conn, peer, order));
    }
}

async fn forward(mut conn: TcpStream, peer: SocketAddr, order: Vec<SocketAddr>) {
    for addr in order {
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(mut upstream)) => {
                let _ = conn.set_nodelay(true);
                let _ = upstream.set_nodelay(true);
                if let Err(e) = tokio::io::copy_bidirectional(&mut conn, &mut upstream).await {
                    tracing::debug!(%peer, endpoint = %addr, error = %e, "proxied connection ended");
                }
                return;
            }
            Ok(Err(e)) => {
                tracing::debug!(%peer, endpoint = %addr, error = %e, "endpoint refused; trying the next")
            }
            Err(_) => {
                tracing::debug!(%peer, endpoint = %addr, "endpoint connect timed out; trying the next")
            }
        }
    }
    // No ready endpoint answered: dropping `conn` closes it.
}

/// Reads the proxy's state file (empty when there is none yet).
pub fn read_state(state_dir: &Path) -> Result<BTreeMap<String, ServiceEntry>, ProxyError> {
    let path = state_dir.join(STATE_FILE);
    match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b)
            .map_err(|e| ProxyError::State(path.display().to_string(), e.to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(ProxyError::State(path.display().to_string(), e.to_string())),
    }
}

/// Where a client on this machine reaches each port of a Service: (port name, address).
/// The proxy's reported address when it has one, else the clusterIP when it is loopback.
pub async fn service_addresses(
    client: &Client,
    state_dir: &Path,
    ns: &str,
    name: &str,
) -> Result<Vec<(String, SocketAddr)>, ProxyError> {
    let id = format!("{ns}/{name}");
    let svc = Api::<Service>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await?
        .ok_or_else(|| ProxyError::NotFound(id.clone()))?;
    let svc =
        serde_json::to_value(svc).map_err(|e| ProxyError::State(id.clone(), e.to_string()))?;
    let spec = &svc["spec"];
    let cluster_ip = spec["clusterIP"].as_str().unwrap_or_default();
    if cluster_ip == "None" {
        return Err(ProxyError::Headless(id));
    }
    let Ok(ip) = cluster_ip.parse::<IpAddr>() else {
        let ty = spec["type"].as_str().unwrap_or("ClusterIP").to_string();
        return Err(ProxyError::NoClusterIp(id, ty));
    };
    if let Some(e) = read_state(state_dir)?
        .get(&id)
        .filter(|e| e.cluster_ip == cluster_ip)
    {
        let out: Vec<(String, SocketAddr)> = e
            .ports
            .iter()
            .filter_map(|p| Some((p.name.clone(), p.local.parse().ok()?)))
            .collect();
        if !out.is_empty() {
            return Ok(out);
        }
    }
    if !ip.is_loopback() {
        return Err(ProxyError::NotProxied(
            id,
            cluster_ip.to_string(),
            state_dir.join(STATE_FILE).display().to_string(),
        ));
    }
    Ok(spec["ports"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter_map(|p| {
            let port = u16::try_from(p["port"].as_u64()?).ok()?;
            Some((
                p["name"].as_str().unwrap_or_default().to_string(),
                SocketAddr::new(ip, port),
            ))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("addr")
    }

    #[test]
    fn round_robin_starts_at_the_next_and_tries_the_rest() {
        let mut b = Backends::default();
        assert!(b.order().is_empty());
        b.set(vec![
            addr("127.0.1.1:80"),
            addr("127.0.1.2:80"),
            addr("127.0.1.3:80"),
        ]);
        let firsts: Vec<SocketAddr> = (0..4).map(|_| b.order()[0]).collect();
        assert_eq!(
            firsts,
            [
                addr("127.0.1.1:80"),
                addr("127.0.1.2:80"),
                addr("127.0.1.3:80"),
                addr("127.0.1.1:80")
            ]
        );
        assert_eq!(
            b.order(),
            [
                addr("127.0.1.2:80"),
                addr("127.0.1.3:80"),
                addr("127.0.1.1:80")
            ]
        );
        b.set(vec![addr("127.0.1.9:80")]);
        assert_eq!(b.order(), [addr("127.0.1.9:80")]);
    }

    #[test]
    fn ready_backends_follow_conditions_and_port_names() {
        let s1 = json!({"addressType": "IPv4", "ports": [{"name": "http", "port": 8080}, {"name": "admin", "port": 9000}],
            "endpoints": [
                {"addresses": ["127.0.1.2"], "conditions": {"ready": true}},
                {"addresses": ["127.0.1.1"], "conditions": {}},
                {"addresses": ["127.0.1.3"], "conditions": {"ready": false, "serving": true}}]});
        let s2 = json!({"addressType": "IPv4", "ports": [{"name": "http", "port": 8081}],
            "endpoints": [{"addresses": ["127.0.1.4"], "conditions": {"ready": true}}]});
        let v6 = json!({"addressType": "IPv6", "ports": [{"name": "http", "port": 8080}],
            "endpoints": [{"addresses": ["::1"]}]});
        assert_eq!(
            ready_backends("http", &[&s1, &s2, &v6]),
            [
                addr("127.0.1.1:8080"),
                addr("127.0.1.2:8080"),
                addr("127.0.1.4:8081")
            ]
        );
        assert_eq!(
            ready_backends("admin", &[&s1]),
            [addr("127.0.1.1:9000"), addr("127.0.1.2:9000")]
        );
        assert!(ready_backends("other", &[&s1]).is_empty());
        let unnamed = json!({"addressType": "IPv4", "ports": [{"port": 80}], "endpoints": [{"addresses": ["127.0.1.1"]}]});
        assert_eq!(ready_backends("", &[&unnamed]), [addr("127.0.1.1:80")]);
    }

    #[tokio::test]
    async fn forward_tries_the_next_endpoint_and_closes_without_one() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let up = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let up_addr = up.local_addr().expect("addr");
        let refused = {
            let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            l.local_addr().expect("addr")
        };
        tokio::spawn(async move {
            if let Ok((mut s, _)) = up.accept().await {
                let _ = s.write_all(b"hello").await;
            }
        });
        let front = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let front_addr = front.local_addr().expect("addr");
        let backends = Arc::new(Mutex::new(Backends::default()));
        backends.lock().expect("lock").set(vec![refused, up_addr]);
        let _task = AbortOnDrop(tokio::spawn(accept_loop(front, backends.clone())));
        let mut c = TcpStream::connect(front_addr).await.expect("connect");
        let mut got = String::new();
        c.read_to_string(&mut got).await.expect("read");
        assert_eq!(got, "hello", "the refused endpoint was skipped");
        backends.lock().expect("lock").set(vec![]);
        let mut c = TcpStream::connect(front_addr).await.expect("connect");
        let mut buf = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(2), c.read_to_end(&mut buf))
            .await
            .expect("closed at once");
        assert_eq!(n.unwrap_or(0), 0);
    }
}
