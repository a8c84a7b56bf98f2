//! Running one container as a local process: image → binary, command/args/env with
//! `$(VAR)` expansion and the downward API, volumes as directories, logs to a file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde_json::Value;
use tokio::process::{Child, Command};

/// Where a pod's files live.
pub struct PodDirs {
    /// `<root>/<ns>/<pod>`: logs, kept across pod re-creation under the same name.
    pub pod: PathBuf,
    /// `<root>/<ns>/<pod>/<uid>`: emptyDir, ConfigMap and Secret volumes, rootfs.
    pub instance: PathBuf,
    /// `<root>/pvc/<ns>`: PVC data, kept until the claim is reused or cleaned by hand.
    pub pvcs: PathBuf,
}

impl PodDirs {
    pub fn new(root: &Path, pod: &Value) -> Self {
        let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default");
        let name = pod["metadata"]["name"].as_str().unwrap_or("unknown");
        let uid = pod["metadata"]["uid"].as_str().unwrap_or("nouid");
        let base = root.join(ns).join(name);
        Self {
            instance: base.join(uid),
            pod: base,
            pvcs: root.join("pvc").join(ns),
        }
    }

    pub fn log(&self, container: &str) -> PathBuf {
        self.pod.join("logs").join(format!("{container}.log"))
    }
}

/// Resolves an image to a binary: exact name, then without tag/digest, then the last path part.
pub fn resolve_image(images: &HashMap<String, PathBuf>, image: &str) -> Option<PathBuf> {
    let no_digest = image.split('@').next().unwrap_or(image);
    let no_tag = match no_digest.rsplit_once(':') {
        Some((n, tag)) if !tag.contains('/') => n,
        _ => no_digest,
    };
    let base = no_tag.rsplit('/').next().unwrap_or(no_tag);
    [image, no_tag, base]
        .iter()
        .find_map(|k| images.get(*k).cloned())
}

fn b64decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = 0u32;
    let mut bits = 0;
    for c in s.bytes().filter(|c| !c.is_ascii_whitespace()) {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            b'=' => break,
            _ => return None,
        };
        buf = (buf << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buf >> bits) as u8);
        }
    }
    Some(out)
}

/// A downward-API field of the pod, e.g. `metadata.name` or `metadata.labels['app']`.
pub fn field_ref(pod: &Value, path: &str) -> Option<String> {
    for (prefix, map) in [
        ("metadata.labels['", "labels"),
        ("metadata.annotations['", "annotations"),
    ] {
        if let Some(key) = path.strip_prefix(prefix).and_then(|k| k.strip_suffix("']")) {
            return pod["metadata"][map][key].as_str().map(String::from);
        }
    }
    let mut cur = pod;
    for seg in path.split('.') {
        cur = cur.get(seg)?;
    }
    match cur {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

/// Data of ConfigMaps and Secrets the pod refers to, fetched by the caller.
#[derive(Default)]
pub struct Refs {
    pub config_maps: HashMap<String, HashMap<String, Vec<u8>>>,
    pub secrets: HashMap<String, HashMap<String, Vec<u8>>>,
    /// Projected service-account tokens, by `<volume>/<path>`.
    pub tokens: HashMap<String, Vec<u8>>,
    /// Variables every container gets first (`KUBERNETES_SERVICE_HOST`/`_PORT`).
    pub service_env: Vec<(String, String)>,
}

impl Refs {
    pub fn add_config_map(&mut self, name: &str, cm: &Value) {
        let mut m = HashMap::new();
        for (k, v) in cm["data"].as_object().cloned().unwrap_or_default() {
            m.insert(k, v.as_str().unwrap_or_default().as_bytes().to_vec());
        }
        for (k, v) in cm["binaryData"].as_object().cloned().unwrap_or_default() {
            m.insert(
                k,
                b64decode(v.as_str().unwrap_or_default()).unwrap_or_default(),
            );
        }
        self.config_maps.insert(name.into(), m);
    }

    pub fn add_secret(&mut self, name: &str, s: &Value) {
        let mut m = HashMap::new();
        for (k, v) in s["data"].as_object().cloned().unwrap_or_default() {
            m.insert(
                k,
                b64decode(v.as_str().unwrap_or_default()).unwrap_or_default(),
            );
        }
        for (k, v) in s["stringData"].as_object().cloned().unwrap_or_default() {
            m.insert(k, v.as_str().unwrap_or_default().as_bytes().to_vec());
        }
        self.secrets.insert(name.into(), m);
    }
}

/// Expands `$(VAR)` from earlier variables; `$$(VAR)` escapes.
fn expand(s: &str, env: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(a) = after.strip_prefix('$') {
            out.push('$');
            rest = a;
        } else if let Some(inner) = after.strip_prefix('(') {
            match inner.find(')') {
                Some(j) => {
                    let var = &inner[..j];
                    match env.iter().rev().find(|(k, _)| k == var) {
                        Some((_, v)) => out.push_str(v),
                        None => {
                            out.push_str("$(");
                            out.push_str(var);
                            out.push(')');
                        }
                    }
                    rest = &inner[j + 1..];
                }
                None => {
                    out.push('$');
                    rest = after;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

pub fn container_env(pod: &Value, c: &Value, refs: &Refs) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = vec![
        (
            "PATH".into(),
            std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into()),
        ),
        (
            "HOSTNAME".into(),
            pod["spec"]["hostname"]
                .as_str()
                .or(pod["metadata"]["name"].as_str())
                .unwrap_or_default()
                .into(),
        ),
    ];
    env.extend(refs.service_env.iter().cloned());
    let lookup = |map: &HashMap<String, HashMap<String, Vec<u8>>>,
                  name: &str,
                  key: &str|
     -> Option<String> {
        map.get(name)
            .and_then(|m| m.get(key))
            .map(|b| String::from_utf8_lossy(b).into_owned())
    };
    for from in c["envFrom"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let prefix = from["prefix"].as_str().unwrap_or_default();
        let (map, name) = if let Some(n) = from["configMapRef"]["name"].as_str() {
            (&refs.config_maps, n)
        } else if let Some(n) = from["secretRef"]["name"].as_str() {
            (&refs.secrets, n)
        } else {
            continue;
        };
        if let Some(m) = map.get(name) {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            for k in keys {
                env.push((
                    format!("{prefix}{k}"),
                    String::from_utf8_lossy(&m[k]).into_owned(),
                ));
            }
        }
    }
    for e in c["env"].as_array().map(Vec::as_slice).unwrap_or_default() {
        let Some(name) = e["name"].as_str() else {
            continue;
        };
        let vf = &e["valueFrom"];
        let value = if let Some(v) = e["value"].as_str() {
            Some(expand(v, &env))
        } else if let Some(p) = vf["fieldRef"]["fieldPath"].as_str() {
            field_ref(pod, p)
        } else if let Some(n) = vf["configMapKeyRef"]["name"].as_str() {
            lookup(
                &refs.config_maps,
                n,
                vf["configMapKeyRef"]["key"].as_str().unwrap_or_default(),
            )
        } else if let Some(n) = vf["secretKeyRef"]["name"].as_str() {
            lookup(
                &refs.secrets,
                n,
                vf["secretKeyRef"]["key"].as_str().unwrap_or_default(),
            )
        } else {
            Some(String::new())
        };
        env.push((name.to_string(), value.unwrap_or_default()));
    }
    env
}

/// Volume name → host directory.
pub fn prepare_volumes(
    pod: &Value,
    dirs: &PodDirs,
    refs: &Refs,
) -> std::io::Result<HashMap<String, PathBuf>> {
    let mut out = HashMap::new();
    for v in pod["spec"]["volumes"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let Some(name) = v["name"].as_str() else {
            continue;
        };
        let path = if let Some(claim) = v["persistentVolumeClaim"]["claimName"].as_str() {
            dirs.pvcs.join(claim)
        } else {
            dirs.instance.join("volumes").join(name)
        };
        std::fs::create_dir_all(&path)?;
        let files = if let Some(n) = v["configMap"]["name"].as_str() {
            Some((refs.config_maps.get(n), &v["configMap"]["items"]))
        } else if let Some(n) = v["secret"]["secretName"].as_str() {
            Some((refs.secrets.get(n), &v["secret"]["items"]))
        } else {
            None
        };
        if let Some((Some(data), items)) = files {
            write_keys(&path, data, items)?;
        }
        // Projected: token, ConfigMap, Secret and downward-API sources in one directory
        // (what `kube-api-access-*` is made of).
        for src in v["projected"]["sources"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            if let Some(n) = src["configMap"]["name"].as_str()
                && let Some(data) = refs.config_maps.get(n)
            {
                write_keys(&path, data, &src["configMap"]["items"])?;
            } else if let Some(n) = src["secret"]["name"].as_str()
                && let Some(data) = refs.secrets.get(n)
            {
                write_keys(&path, data, &src["secret"]["items"])?;
            } else if src["serviceAccountToken"].is_object() {
                let p = src["serviceAccountToken"]["path"]
                    .as_str()
                    .unwrap_or("token");
                if let Some(token) = refs.tokens.get(&format!("{name}/{p}")) {
                    write_file(&path.join(p), token)?;
                }
            } else if let Some(items) = src["downwardAPI"]["items"].as_array() {
                for i in items {
                    let (Some(p), Some(f)) =
                        (i["path"].as_str(), i["fieldRef"]["fieldPath"].as_str())
                    else {
                        continue;
                    };
                    write_file(
                        &path.join(p),
                        field_ref(pod, f).unwrap_or_default().as_bytes(),
                    )?;
                }
            }
        }
        out.insert(name.to_string(), path);
    }
    Ok(out)
}

/// Writes a file atomically (a reader never sees half a renewed token).
fn write_file(target: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = target.with_extension("quiver-tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, target)
}

/// The keys of a ConfigMap or Secret as files: all of them, or the `items` chosen.
fn write_keys(dir: &Path, data: &HashMap<String, Vec<u8>>, items: &Value) -> std::io::Result<()> {
    let mut keys: Vec<(String, String)> = match items.as_array() {
        Some(items) => items
            .iter()
            .filter_map(|i| {
                Some((
                    i["key"].as_str()?.to_string(),
                    i["path"].as_str()?.to_string(),
                ))
            })
            .collect(),
        None => data.keys().map(|k| (k.clone(), k.clone())).collect(),
    };
    keys.sort();
    for (k, p) in keys {
        if let Some(bytes) = data.get(&k) {
            write_file(&dir.join(&p), bytes)?;
        }
    }
    Ok(())
}

/// Mount path → host path, longest first, for rewriting container paths.
pub fn mounts(c: &Value, volumes: &HashMap<String, PathBuf>) -> Vec<(String, PathBuf)> {
    let mut out: Vec<(String, PathBuf)> = c["volumeMounts"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter_map(|m| {
            let host = volumes.get(m["name"].as_str()?)?;
            let host = match m["subPath"].as_str() {
                Some(sp) if !sp.is_empty() => host.join(sp),
                _ => host.clone(),
            };
            Some((
                m["mountPath"].as_str()?.trim_end_matches('/').to_string(),
                host,
            ))
        })
        .collect();
    out.sort_by_key(|(m, _)| std::cmp::Reverse(m.len()));
    out
}

/// Processes share the host filesystem, so a container path under a mount (alone or after
/// `=`, as in `--data=/data/x`) is rewritten to the volume's host directory.
pub fn rewrite_paths(s: &str, mounts: &[(String, PathBuf)]) -> String {
    for (mp, host) in mounts {
        if mp.is_empty() {
            continue;
        }
        let host = host.to_string_lossy();
        let replace_at = |prefix: &str, rest: &str| -> Option<String> {
            let tail = rest.strip_prefix(mp.as_str())?;
            (tail.is_empty() || tail.starts_with('/')).then(|| format!("{prefix}{host}{tail}"))
        };
        if let Some(r) = replace_at("", s) {
            return r;
        }
        if let Some((k, v)) = s.split_once('=')
            && let Some(r) = replace_at(&format!("{k}="), v)
        {
            return r;
        }
    }
    s.to_string()
}

pub struct Spec {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub workdir: PathBuf,
    pub log: PathBuf,
    /// Container mount path -> host directory, for exec probes run later.
    pub mounts: Vec<(String, PathBuf)>,
    /// Host directory -> container path, bind-mounted in the process's own mount
    /// namespace: for paths programs hard-code (the service-account directory that
    /// `kube::Config::incluster()` and client-go read), where rewriting arguments cannot help.
    pub binds: Vec<(PathBuf, String)>,
}

/// Mount paths that programs read without being told: bind-mounted, not only rewritten.
pub fn is_well_known_mount(path: &str) -> bool {
    path == "/var/run/secrets"
        || path.starts_with("/var/run/secrets/")
        || path == "/run/secrets"
        || path.starts_with("/run/secrets/")
}

/// Builds what to run; `Err` is a waiting reason and message.
pub fn build(
    pod: &Value,
    c: &Value,
    images: &HashMap<String, PathBuf>,
    dirs: &PodDirs,
    volumes: &HashMap<String, PathBuf>,
    refs: &Refs,
) -> Result<Spec, (String, String)> {
    let image = c["image"].as_str().unwrap_or_default();
    let program = resolve_image(images, image).ok_or_else(|| {
        (
            "ErrImagePull".to_string(),
            format!("image {image:?} is not in the kubelet's image table"),
        )
    })?;
    let mounts = mounts(c, volumes);
    let env: Vec<(String, String)> = container_env(pod, c, refs)
        .into_iter()
        .map(|(k, v)| (k, rewrite_paths(&v, &mounts)))
        .collect();
    let strs = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    // The mapped binary is the entrypoint: command[0] names it, the rest are arguments.
    let mut args: Vec<String> = strs(&c["command"]).into_iter().skip(1).collect();
    args.extend(strs(&c["args"]));
    let args = args
        .iter()
        .map(|a| rewrite_paths(&expand(a, &env), &mounts))
        .collect();
    let rootfs = dirs.instance.join("rootfs");
    let workdir = match c["workingDir"].as_str().filter(|w| !w.is_empty()) {
        Some(w) => {
            let r = rewrite_paths(w, &mounts);
            if r != w {
                PathBuf::from(r)
            } else {
                rootfs.join(w.trim_start_matches('/'))
            }
        }
        None => rootfs,
    };
    let binds = mounts
        .iter()
        .filter(|(mp, _)| is_well_known_mount(mp))
        .map(|(mp, host)| (host.clone(), mp.clone()))
        .collect();
    Ok(Spec {
        program,
        args,
        env,
        workdir,
        log: dirs.log(c["name"].as_str().unwrap_or("container")),
        mounts,
        binds,
    })
}

pub fn spawn(spec: &Spec) -> std::io::Result<Child> {
    std::fs::create_dir_all(&spec.workdir)?;
    if let Some(p) = spec.log.parent() {
        std::fs::create_dir_all(p)?;
    }
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&spec.log)?;
    let err = out.try_clone()?;
    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .current_dir(&spec.workdir)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        // Its own process group, so signals reach everything it starts.
        .process_group(0)
        .kill_on_drop(true);
    if !spec.binds.is_empty() {
        let mut binds = Vec::new();
        for (host, target) in &spec.binds {
            // The mount point must exist on the host; an empty directory is all it takes.
            std::fs::create_dir_all(target)?;
            binds.push((
                c_path(host.as_os_str())?,
                c_path(std::ffi::OsStr::new(target))?,
            ));
        }
        // SAFETY: the closure runs between fork and exec and only makes syscalls on
        // strings allocated before the fork.
        unsafe {
            cmd.pre_exec(move || bind_in_new_namespace(&binds));
        }
    }
    cmd.spawn()
}

fn c_path(p: &std::ffi::OsStr) -> std::io::Result<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(p.as_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "path with a NUL byte"))
}

/// In the child before exec: a private mount namespace with each `(host, target)` bound.
fn bind_in_new_namespace(binds: &[(std::ffi::CString, std::ffi::CString)]) -> std::io::Result<()> {
    let null = std::ptr::null::<libc::c_char>();
    // SAFETY: plain syscalls on valid NUL-terminated strings; nothing is allocated.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // Mounts made here must not propagate back to the host.
        if libc::mount(
            null,
            c"/".as_ptr(),
            null,
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        for (src, dst) in binds {
            if libc::mount(
                src.as_ptr(),
                dst.as_ptr(),
                null,
                libc::MS_BIND,
                std::ptr::null(),
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

/// Whether this kubelet may bind-mount (root, or CAP_SYS_ADMIN): tried once at start on a
/// throwaway process, so pods are not failed for it later.
pub fn can_bind_mount(scratch: &Path) -> bool {
    let src = scratch.join("bind-probe");
    let dst = scratch.join("bind-probe-target");
    if std::fs::create_dir_all(&src).is_err() || std::fs::create_dir_all(&dst).is_err() {
        return false;
    }
    let (Ok(s), Ok(d)) = (c_path(src.as_os_str()), c_path(dst.as_os_str())) else {
        return false;
    };
    let binds = vec![(s, d)];
    let mut cmd = std::process::Command::new("/bin/true");
    // SAFETY: as in `spawn`.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
            bind_in_new_namespace(&binds)
        });
    }
    let ok = cmd.status().is_ok_and(|s| s.success());
    let _ = std::fs::remove_dir(&src);
    let _ = std::fs::remove_dir(&dst);
    ok
}

/// Sends `sig` to the process group of `child`.
pub fn signal(child: &Child, sig: i32) {
    if let Some(pid) = child.id() {
        // SAFETY: kill(2) on a process group we created; no memory is shared.
        unsafe {
            libc::kill(-(pid as i32), sig);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn env_expansion_field_refs_and_path_rewrites() {
        let pod = json!({"metadata": {"name": "p", "namespace": "n", "annotations": {"a/b": "7"}}, "status": {"podIP": "127.0.1.1"}});
        let c = json!({"env": [
            {"name": "A", "value": "x"},
            {"name": "B", "value": "$(A)-y-$$(A)"},
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "IDX", "valueFrom": {"fieldRef": {"fieldPath": "metadata.annotations['a/b']"}}},
        ]});
        let env = container_env(&pod, &c, &Refs::default());
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        assert_eq!(get("B").as_deref(), Some("x-y-$(A)"));
        assert_eq!(get("IP").as_deref(), Some("127.0.1.1"));
        assert_eq!(get("IDX").as_deref(), Some("7"));
        let m = vec![("/data".to_string(), PathBuf::from("/tmp/v"))];
        assert_eq!(rewrite_paths("--dir=/data/x", &m), "--dir=/tmp/v/x");
        assert_eq!(rewrite_paths("/data", &m), "/tmp/v");
        assert_eq!(rewrite_paths("/database", &m), "/database");
        let mut images = HashMap::new();
        images.insert("index-node".to_string(), PathBuf::from("/bin/x"));
        assert_eq!(
            resolve_image(&images, "ghcr.io/quiver/index-node:1.2"),
            Some(PathBuf::from("/bin/x"))
        );
        assert_eq!(b64decode("aGVsbG8=").as_deref(), Some(&b"hello"[..]));
    }
}
