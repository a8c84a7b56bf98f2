//! `query NAME --vector ... | --random`: one search through the index's router Service
//! (`quiver.v1.Query/Search`).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use k8s_openapi::api::core::v1::Service;
use kube::Api;
use quiver_api::{VectorIndex, names, ports};
use quiver_proto::query_client::QueryClient;
use quiver_proto::{SearchRequest, SearchResponse};
use serde::{Deserialize, Serialize};

use crate::connect::{Global, Kube, connect};
use crate::output::{self, OutputArg};
use crate::wait::parse_duration;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The VectorIndex.
    pub name: String,
    /// The query vector: spec.dimension comma-separated numbers, e.g. 0.1,-0.2,0.3 (brackets
    /// and spaces are allowed).
    #[arg(
        long,
        value_name = "V1,V2,...",
        allow_hyphen_values = true,
        required_unless_present = "random",
        conflicts_with = "random"
    )]
    pub vector: Option<String>,
    /// A random vector of spec.dimension components in [-1, 1).
    #[arg(long)]
    pub random: bool,
    /// Seed of --random (default: the clock).
    #[arg(long, requires = "random")]
    pub seed: Option<u64>,
    /// Neighbours to return.
    #[arg(long, default_value_t = 10)]
    pub k: u32,
    /// Lists to probe (default: the version's, spec.index.nprobe).
    #[arg(long)]
    pub nprobe: Option<u32>,
    /// Ask this version (one the routers hold) instead of the active one.
    #[arg(long, value_name = "VERSION")]
    pub version: Option<String>,
    /// The router's gRPC address, HOST:PORT. Default: the index's Service (its ClusterIP, or
    /// the local cluster's proxy address from services.json). From outside a real cluster:
    /// kubectl port-forward svc/NAME 7000:7000, then --address 127.0.0.1:7000.
    #[arg(long, value_name = "HOST:PORT")]
    pub address: Option<String>,
    /// How long the query may take (connecting included).
    #[arg(long, default_value = "10s")]
    pub timeout: String,
    #[command(flatten)]
    pub out: OutputArg,
}

/// Parses a vector given on the command line. With `dimension`, the count must match.
pub fn parse_vector(text: &str, dimension: Option<u32>) -> Result<Vec<f32>, String> {
    let inner = text.trim();
    let inner = inner
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or(inner)
        .trim();
    if inner.is_empty() {
        return Err(match dimension {
            Some(d) => format!("the vector is empty: give {d} comma-separated numbers"),
            None => "the vector is empty: give comma-separated numbers".into(),
        });
    }
    let mut out = Vec::new();
    for (i, part) in inner.split(',').enumerate() {
        let p = part.trim();
        if p.is_empty() {
            return Err(format!(
                "component {} is empty (two commas in a row, or a trailing comma?)",
                i + 1
            ));
        }
        let x: f32 = p
            .parse()
            .map_err(|_| format!("component {} ({p:?}) is not a number", i + 1))?;
        if !x.is_finite() {
            return Err(format!(
                "component {} is {p}: components must be finite numbers",
                i + 1
            ));
        }
        out.push(x);
    }
    if let Some(d) = dimension
        && out.len() != d as usize
    {
        return Err(format!(
            "the vector has {} components but the index has dimension {d} (spec.dimension)",
            out.len()
        ));
    }
    Ok(out)
}

/// `dimension` components in [-1, 1) from `seed` (xorshift64*).
pub fn random_vector(dimension: u32, seed: u64) -> Vec<f32> {
    let mut s = seed ^ 0x9E37_79B9_7F4A_7C15;
    if s == 0 {
        s = 1;
    }
    (0..dimension)
        .map(|_| {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            let r = s.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40; // 24 bits
            (r as f32 / (1u32 << 23) as f32) - 1.0
        })
        .collect()
}

/// An entry of the local cluster's `services.json` (e2e/src/proxy.rs writes it).
#[derive(Deserialize, Debug)]
pub struct ProxyEntry {
    #[serde(rename = "clusterIP")]
    pub cluster_ip: String,
    #[serde(default)]
    pub ports: Vec<ProxyPort>,
}

#[derive(Deserialize, Debug)]
pub struct ProxyPort {
    pub name: String,
    pub local: String,
}

/// Where this machine reaches the router Service's query port: the local cluster proxy's
/// address for it when `services_json` lists the Service with the same clusterIP, else the
/// clusterIP and port.
pub fn service_address(
    svc: &Service,
    services_json: Option<&str>,
    namespace: &str,
    name: &str,
) -> Result<String, String> {
    let spec = svc.spec.clone().unwrap_or_default();
    let port = spec
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some(ports::QUERY_NAME))
        .or_else(|| spec.ports.iter().flatten().next())
        .ok_or_else(|| format!("Service {name} has no ports"))?;
    let ip = spec.cluster_ip.unwrap_or_default();
    if ip.is_empty() || ip == "None" {
        return Err(format!("Service {name} has no ClusterIP"));
    }
    if let Some(text) = services_json {
        let state: BTreeMap<String, ProxyEntry> = serde_json::from_str(text)
            .map_err(|e| format!("services.json of the local cluster: {e}"))?;
        if let Some(e) = state
            .get(&format!("{namespace}/{name}"))
            .filter(|e| e.cluster_ip == ip)
            && let Some(p) = e.ports.iter().find(|p| Some(&p.name) == port.name.as_ref())
        {
            return Ok(p.local.clone());
        }
    }
    Ok(if ip.contains(':') {
        format!("[{ip}]:{}", port.port)
    } else {
        format!("{ip}:{}", port.port)
    })
}

/// What `query -o json|yaml` prints.
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct Answer {
    pub index: String,
    pub address: String,
    pub version: String,
    pub ids: Vec<u64>,
    pub distances: Vec<f32>,
    pub lists_probed: u32,
    pub candidates_scanned: u64,
    pub shards_asked: u32,
    pub missing_shards: Vec<u32>,
}

pub fn answer(index: &str, address: &str, r: SearchResponse) -> Answer {
    let c = r.counters.unwrap_or_default();
    Answer {
        index: index.into(),
        address: address.into(),
        version: r.version,
        ids: r.ids,
        distances: r.distances,
        lists_probed: c.lists_probed,
        candidates_scanned: c.candidates_scanned,
        shards_asked: c.shards_asked,
        missing_shards: r.missing_shards,
    }
}

/// RANK ID DISTANCE, then one line on where the answer came from.
pub fn answer_table(a: &Answer) -> String {
    let rows: Vec<Vec<String>> = a
        .ids
        .iter()
        .zip(&a.distances)
        .enumerate()
        .map(|(i, (id, d))| vec![(i + 1).to_string(), id.to_string(), format!("{d:.6}")])
        .collect();
    let mut out = output::table(&["RANK", "ID", "DISTANCE"], &rows);
    out.push_str(&format!(
        "version {}: {} lists probed, {} candidates scanned, {} shards asked (router {})\n",
        a.version, a.lists_probed, a.candidates_scanned, a.shards_asked, a.address
    ));
    if !a.missing_shards.is_empty() {
        out.push_str(&format!("missing shards: {:?}\n", a.missing_shards));
    }
    out
}

async fn resolve_address(kube: &Kube, name: &str) -> anyhow::Result<String> {
    let svc_name = names::query_service(name);
    let svc = Api::<Service>::namespaced(kube.client.clone(), &kube.namespace)
        .get_opt(&svc_name)
        .await
        .with_context(|| format!("reading Service {svc_name}"))?
        .ok_or_else(|| {
            anyhow!(
                "Service {svc_name} not found in {}: the operator makes it with the index",
                kube.namespace
            )
        })?;
    let state = kube
        .local_state_dir
        .as_ref()
        .and_then(|d| std::fs::read_to_string(d.join("services.json")).ok());
    service_address(&svc, state.as_deref(), &kube.namespace, &svc_name).map_err(|e| anyhow!(e))
}

pub async fn run(g: &Global, args: &Args) -> anyhow::Result<()> {
    let timeout = parse_duration(&args.timeout).map_err(|e| anyhow!("--timeout: {e}"))?;
    // The index gives the dimension; with --address and --vector the query can go without it.
    let kube = connect(g).await;
    let index: anyhow::Result<VectorIndex> = match &kube {
        Ok(k) => k.index(&args.name).await,
        Err(e) => Err(anyhow!("{e:#}")),
    };
    let dimension = match (&index, &args.address, &args.vector) {
        (Ok(vi), _, _) => Some(vi.spec.dimension),
        (Err(e), Some(_), Some(_)) => {
            eprintln!("warning: the vector's dimension is not checked: {e:#}");
            None
        }
        (Err(_), _, _) => return Err(index.err().unwrap_or_else(|| anyhow!("no index"))),
    };
    let vector = match (&args.vector, dimension) {
        (Some(text), d) => parse_vector(text, d).map_err(|e| anyhow!("--vector: {e}"))?,
        (None, Some(d)) => random_vector(d, args.seed.unwrap_or_else(crate::retrain::nonce)),
        (None, None) => return Err(anyhow!("--random needs the index's spec.dimension")),
    };
    let address = match (&args.address, &kube) {
        (Some(a), _) => a.clone(),
        (None, Ok(k)) => resolve_address(k, &args.name).await?,
        (None, Err(e)) => return Err(anyhow!("{e:#}")),
    };

    let hint = format!(
        "from outside the cluster: kubectl port-forward svc/{} {p}:{p}, then --address 127.0.0.1:{p}",
        names::query_service(&args.name),
        p = ports::QUERY
    );
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .map_err(|e| anyhow!("--address {address}: {e}"))?
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .timeout(timeout);
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| anyhow!("cannot reach the router at {address}: {e} ({hint})"))?;
    let request = SearchRequest {
        vector,
        k: args.k,
        nprobe: args.nprobe,
        allow_partial: false,
        version: args.version.clone(),
    };
    let response = tokio::time::timeout(timeout, QueryClient::new(channel).search(request))
        .await
        .map_err(|_| anyhow!("no answer from the router at {address} within {timeout:?}"))?
        .map_err(|s| {
            anyhow!(
                "the router at {address} answered {:?}: {}",
                s.code(),
                s.message()
            )
        })?
        .into_inner();
    let a = answer(&args.name, &address, response);
    match args.out.document(&a)? {
        Some(text) => print!("{text}"),
        None => print!("{}", answer_table(&a)),
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn vectors_parse_with_clear_errors() {
        assert_eq!(
            parse_vector("0.1, -2,3e-1", Some(3)).unwrap(),
            vec![0.1, -2.0, 0.3]
        );
        assert_eq!(parse_vector(" [1,2] ", None).unwrap(), vec![1.0, 2.0]);
        assert_eq!(
            parse_vector("", Some(4)).unwrap_err(),
            "the vector is empty: give 4 comma-separated numbers"
        );
        assert_eq!(
            parse_vector("[]", None).unwrap_err(),
            "the vector is empty: give comma-separated numbers"
        );
        assert_eq!(
            parse_vector("1,2,3", Some(4)).unwrap_err(),
            "the vector has 3 components but the index has dimension 4 (spec.dimension)"
        );
        assert_eq!(
            parse_vector("1,NaN,3", None).unwrap_err(),
            "component 2 is NaN: components must be finite numbers"
        );
        assert_eq!(
            parse_vector("1,2,inf", None).unwrap_err(),
            "component 3 is inf: components must be finite numbers"
        );
        assert_eq!(
            parse_vector("1,x,3", None).unwrap_err(),
            "component 2 (\"x\") is not a number"
        );
        assert_eq!(
            parse_vector("1,,3", None).unwrap_err(),
            "component 2 is empty (two commas in a row, or a trailing comma?)"
        );
        assert!(parse_vector("1,2,", Some(2)).is_err());
    }

    #[test]
    fn random_vectors_have_the_dimension_and_stay_in_range() {
        let v = random_vector(128, 7);
        assert_eq!(v.len(), 128);
        assert!(v.iter().all(|x| (-1.0..1.0).contains(x)), "{v:?}");
        assert_eq!(v, random_vector(128, 7));
        assert_ne!(v, random_vector(128, 8));
        let mean = v.iter().sum::<f32>() / 128.0;
        assert!(mean.abs() < 0.25, "{mean}");
        assert_eq!(random_vector(3, 0).len(), 3);
    }

    fn service(ip: &str) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": "docs", "namespace": "search"},
            "spec": {"clusterIP": ip, "ports": [
                {"name": "metrics", "port": 7001},
                {"name": "query", "port": 7000}]}
        }))
        .unwrap()
    }

    #[test]
    fn the_service_address_prefers_the_local_proxy() {
        let svc = service("10.96.3.4");
        assert_eq!(
            service_address(&svc, None, "search", "docs").unwrap(),
            "10.96.3.4:7000"
        );
        let state = r#"{"search/docs": {"clusterIP": "10.96.3.4", "address": "127.97.0.2",
            "ports": [{"name": "metrics", "port": 7001, "local": "127.97.0.2:7001"},
                      {"name": "query", "port": 7000, "local": "127.97.0.2:7000"}]},
            "other/docs": {"clusterIP": "10.96.9.9", "address": "127.97.0.3", "ports": []}}"#;
        assert_eq!(
            service_address(&svc, Some(state), "search", "docs").unwrap(),
            "127.97.0.2:7000"
        );
        // A stale entry (the Service was re-created with another address) is not used.
        let svc2 = service("10.96.7.7");
        assert_eq!(
            service_address(&svc2, Some(state), "search", "docs").unwrap(),
            "10.96.7.7:7000"
        );
        assert!(
            service_address(&service("None"), None, "search", "docs")
                .unwrap_err()
                .contains("no ClusterIP")
        );
        assert_eq!(
            service_address(&service("fd00::1"), None, "search", "docs").unwrap(),
            "[fd00::1]:7000"
        );
    }

    #[test]
    fn answers_print_as_a_table_or_a_document() {
        let r = SearchResponse {
            ids: vec![42, 7],
            distances: vec![0.5, 1.25],
            version: "v1-0a0b0c0d".into(),
            counters: Some(quiver_proto::Counters {
                lists_probed: 8,
                candidates_scanned: 900,
                shards_asked: 2,
            }),
            missing_shards: vec![],
        };
        let a = answer("docs", "127.0.0.1:7000", r);
        assert_eq!(
            answer_table(&a),
            "RANK   ID   DISTANCE\n\
             1      42   0.500000\n\
             2      7    1.250000\n\
             version v1-0a0b0c0d: 8 lists probed, 900 candidates scanned, 2 shards asked (router 127.0.0.1:7000)\n"
        );
        let v = serde_json::to_value(&a).unwrap();
        assert_eq!(v["ids"], json!([42, 7]));
        assert_eq!(v["version"], "v1-0a0b0c0d");
        assert_eq!(v["candidatesScanned"], 900);
    }
}
