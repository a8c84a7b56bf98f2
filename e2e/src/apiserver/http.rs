//! HTTP routing: Kubernetes REST paths onto store operations.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::Response;
use serde_json::{Value, json};

use super::error::ApiError;
use super::registry::ResourceInfo;
use super::selectors::Selector;
use super::store::{DeleteOptions, PatchKind, Store, check_resource_version};
use super::table;
use super::watch::{self, WatchRequest};
use super::{auth, convert, discovery};
use super::{patch, scale};

pub struct AppState {
    pub store: Arc<Store>,
    pub addr: String,
    pub bookmark_interval: Duration,
    pub tokens: auth::Tokens,
    pub audit: Arc<auth::WriteAudit>,
}

impl AppState {
    /// The holder of a bearer token: known, unexpired, and its bound pod still there (a
    /// real server stops honouring a pod-bound token once the pod is deleted).
    fn authenticate(&self, token: &str) -> Option<auth::TokenInfo> {
        let info = self.tokens.lookup(token)?;
        if let Some((pod, uid)) = &info.pod {
            let res = self.store.resolve("", "v1", "pods")?;
            let live = self.store.get(&res, &info.namespace, pod).ok()?;
            if live["metadata"]["uid"].as_str() != Some(uid.as_str()) {
                return None;
            }
        }
        Some(info)
    }

    /// POST `serviceaccounts/<name>/token`: a TokenRequest, answered with a token for it.
    fn token_request(&self, ns: &str, sa: &str, body: &Value) -> Result<Response, ApiError> {
        let sa_res = self
            .store
            .resolve("", "v1", "serviceaccounts")
            .ok_or_else(ApiError::route_not_found)?;
        let account = self.store.get(&sa_res, ns, sa)?;
        let spec = auth::TokenSpec::parse(body, sa)?;
        let pod = match &spec.bound {
            Some((kind, name, uid)) if kind == "Pod" => {
                let pods = self
                    .store
                    .resolve("", "v1", "pods")
                    .ok_or_else(ApiError::route_not_found)?;
                let live = self.store.get(&pods, ns, name)?;
                let live_uid = live["metadata"]["uid"].as_str().unwrap_or_default();
                if !uid.is_empty() && uid != live_uid {
                    return Err(ApiError::conflict(
                        "",
                        "pods",
                        name,
                        &format!(
                            "the UID in the bound object reference ({uid}) does not match the UID in record ({live_uid}). The object might have been deleted and then recreated"
                        ),
                    ));
                }
                Some((name.clone(), live_uid.to_string()))
            }
            _ => None,
        };
        let expires = super::time::unix_now() + spec.expiration;
        let info = auth::TokenInfo {
            namespace: ns.to_string(),
            service_account: sa.to_string(),
            sa_uid: account["metadata"]["uid"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            pod,
            expires,
        };
        let token = self.tokens.issue(info, &spec.audiences);
        let mut out_spec = body["spec"].clone();
        if !out_spec.is_object() {
            out_spec = json!({});
        }
        out_spec["audiences"] = json!(spec.audiences);
        out_spec["expirationSeconds"] = json!(spec.expiration);
        Ok(json_response(
            201,
            &json!({
                "kind": "TokenRequest", "apiVersion": "authentication.k8s.io/v1",
                "metadata": {"name": sa, "namespace": ns, "creationTimestamp": null},
                "spec": out_spec,
                "status": {"token": token, "expirationTimestamp": super::time::rfc3339(expires)},
            }),
        ))
    }
}

fn json_response(code: u16, v: &Value) -> Response {
    Response::builder()
        .status(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(v.to_string()))
        .unwrap_or_else(|_| Response::new(Body::empty()))
}

fn error_response(e: &ApiError) -> Response {
    json_response(e.code, &e.to_status())
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() && i + 2 <= bytes.len() - 1 + 1 => {
                let hex = std::str::from_utf8(&bytes[i + 1..(i + 3).min(bytes.len())]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_query(q: Option<&str>) -> HashMap<String, String> {
    q.unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (percent_decode(k), percent_decode(v)),
            None => (percent_decode(p), String::new()),
        })
        .collect()
}

struct Target {
    res: ResourceInfo,
    version: String,
    ns: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

fn present(res: &ResourceInfo, version: &str, mut obj: Value) -> Value {
    obj["apiVersion"] = json!(res.api_version(version));
    obj["kind"] = json!(res.kind);
    if convert::is_events_api(res) {
        convert::event_from_core(&mut obj);
    }
    obj
}

/// A request body as the store keeps the object (events.k8s.io Events as core Events).
fn stored_form(res: &ResourceInfo, mut body: Value, json_patch: bool) -> Value {
    if convert::is_events_api(res) {
        if json_patch {
            convert::event_json_patch_to_core(&mut body);
        } else {
            convert::event_to_core(&mut body);
        }
    }
    body
}

pub async fn handle(
    State(app): State<Arc<AppState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let q = parse_query(uri.query());
    let segs: Vec<String> = uri
        .path()
        .split('/')
        .filter(|s| !s.is_empty())
        .map(percent_decode)
        .collect();
    let s: Vec<&str> = segs.iter().map(String::as_str).collect();
    tracing::debug!(%method, path = uri.path(), "request");
    let reg = || app.store.registry();
    let token = auth::bearer(
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok()),
    );
    let user = match token {
        Some(t) => match app.authenticate(t) {
            Some(info) => Some(info),
            None => return error_response(&auth::unauthorized()),
        },
        None => None,
    };
    let (group, version, rest): (&str, &str, &[&str]) = match s.as_slice() {
        ["apis", "authentication.k8s.io", "v1", "selfsubjectreviews"] if method == Method::POST => {
            let info = user
                .as_ref()
                .map(auth::TokenInfo::user_info)
                .unwrap_or_else(auth::admin_user_info);
            return json_response(
                201,
                &json!({"kind": "SelfSubjectReview", "apiVersion": "authentication.k8s.io/v1",
                        "metadata": {"creationTimestamp": null}, "status": {"userInfo": info}}),
            );
        }
        ["version"] => return json_response(200, &discovery::version()),
        ["healthz" | "livez" | "readyz"] => {
            return Response::builder()
                .status(200)
                .body(Body::from("ok"))
                .unwrap_or_else(|_| Response::new(Body::empty()));
        }
        ["openapi", "v3"] => return json_response(200, &discovery::openapi_v3_root(&reg())),
        ["openapi", "v3", gv @ ..] => {
            let (g, v) = match gv {
                ["api", v] => ("", *v),
                ["apis", g, v] => (*g, *v),
                _ => return error_response(&ApiError::route_not_found()),
            };
            return match discovery::openapi_v3_gv(&reg(), g, v) {
                Some(d) => json_response(200, &d),
                None => error_response(&ApiError::route_not_found()),
            };
        }
        ["api"] => return json_response(200, &discovery::core_versions(&app.addr)),
        ["apis"] => return json_response(200, &discovery::group_list(&reg())),
        ["apis", g] => {
            return match discovery::group(&reg(), g) {
                Some(d) => json_response(200, &d),
                None => error_response(&ApiError::route_not_found()),
            };
        }
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return error_response(&ApiError::route_not_found()),
    };
    if rest.is_empty() {
        return match discovery::resource_list(&reg(), group, version) {
            Some(d) if method == Method::GET => json_response(200, &d),
            _ => error_response(&ApiError::route_not_found()),
        };
    }
    let find = |plural: &str| app.store.resolve(group, version, plural);
    let (plural, ns, name, sub) = match rest {
        ["namespaces", ns, r] if !matches!(*r, "status" | "finalize") => {
            (*r, Some(*ns), None, None)
        }
        ["namespaces", ns, r, n] => (*r, Some(*ns), Some(*n), None),
        ["namespaces", ns, r, n, sub] => (*r, Some(*ns), Some(*n), Some(*sub)),
        [r] => (*r, None, None, None),
        [r, n] => (*r, None, Some(*n), None),
        [r, n, sub] => (*r, None, Some(*n), Some(*sub)),
        _ => return error_response(&ApiError::route_not_found()),
    };
    let Some(res) = find(plural) else {
        return error_response(&ApiError::route_not_found());
    };
    if !res.namespaced && ns.is_some() {
        return error_response(&ApiError::route_not_found());
    }
    if let Some(sub) = sub {
        let ok = (sub == "status" && res.status)
            || (sub == "scale" && res.scale.is_some())
            || (sub == "binding" && res.plural == "pods" && res.group.is_empty())
            || (sub == "log" && res.plural == "pods" && res.group.is_empty())
            || (sub == "token" && res.plural == "serviceaccounts" && res.group.is_empty())
            || (sub == "finalize" && res.plural == "namespaces");
        if !ok {
            return error_response(&ApiError::route_not_found());
        }
    }
    let t = Target {
        version: version.to_string(),
        ns: ns.map(String::from),
        name: name.map(String::from),
        sub: sub.map(String::from),
        res,
    };
    if let (Some("log"), Some(ns), Some(name)) = (sub, ns, name) {
        // Proxied to the pod's kubelet, streamed (follow=true stays open).
        if method != Method::GET {
            return error_response(&ApiError::method_not_allowed());
        }
        return match super::podlog::proxy(&app.store, ns, name, &q).await {
            Ok(r) => r,
            Err(e) => error_response(&e),
        };
    }
    let ua = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("unknown");
    let manager = q
        .get("fieldManager")
        .cloned()
        .unwrap_or_else(|| ua.split('/').next().unwrap_or("unknown").to_string());
    let mut content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_string();
    let mut body = body;
    if !body.is_empty() && content_type.contains("protobuf") {
        // Helm writes its release records as protobuf and does not fall back to JSON: the
        // kinds it writes are decoded (protobuf.rs says which), the rest refused with 415.
        match super::protobuf::decode(&body, &content_type) {
            Ok(v) => {
                body = Bytes::from(serde_json::to_vec(&v).unwrap_or_default());
                content_type = "application/json".to_string();
            }
            Err(e) => return error_response(&e),
        }
    } else if !body.is_empty() && content_type.contains("cbor") {
        // Clients such as kubectl fall back to JSON on 415.
        return error_response(&ApiError::unsupported_media(&content_type));
    }
    if q.get("fieldValidation").is_some_and(|v| v == "Strict")
        && let Err(e) = strict_check(&t, &content_type, &body)
    {
        return error_response(&e);
    }
    let as_table = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(table::wanted);
    let req = Req {
        q: &q,
        manager: &manager,
        ct: &content_type,
        body: &body,
        as_table,
    };
    let audited = matches!(
        method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    )
    .then(|| auth::AuditedWrite {
        user: user
            .as_ref()
            .map(auth::TokenInfo::username)
            .unwrap_or_else(|| auth::ADMIN_USER.to_string()),
        verb: method.to_string(),
        resource: match &t.sub {
            Some(sub) => format!("{}/{sub}", t.res.plural),
            None => t.res.plural.clone(),
        },
        namespace: t.ns.clone(),
        name: t.name.clone(),
    });
    match serve(&app, &method, t, &req) {
        Ok(r) => {
            if let Some(w) = audited
                && r.status().is_success()
            {
                app.audit.record(w);
            }
            r
        }
        Err(e) => {
            tracing::debug!(error = %e, "request failed");
            error_response(&e)
        }
    }
}

/// `fieldValidation=Strict`: unknown fields of a custom resource are an error, not pruned.
fn strict_check(t: &Target, content_type: &str, body: &Bytes) -> Result<(), ApiError> {
    let Some(schemas) = &t.res.schemas else {
        return Ok(());
    };
    if body.is_empty() || content_type.starts_with("application/json-patch+json") {
        return Ok(());
    }
    let Ok(obj) = serde_json::from_slice::<Value>(body) else {
        return Ok(());
    };
    let Some(schema) = schemas.get(&t.version) else {
        return Ok(());
    };
    let unknown = super::schema::unknown_fields(&obj, schema);
    if unknown.is_empty() {
        return Ok(());
    }
    if content_type.starts_with("application/apply-patch") {
        // Server-side apply finds unknown fields while converting the patch to its typed
        // form, and real servers (1.28 to at least 1.35) return that error unmapped: a 500
        // with no reason (kubernetes/kubernetes#139253), not the 400 of a strict decode.
        let m = &obj["metadata"];
        return Err(ApiError::internal(format!(
            "failed to create typed patch object ({}/{}; {}, Kind={}): {}",
            m["namespace"]
                .as_str()
                .or(t.ns.as_deref())
                .unwrap_or_default(),
            m["name"].as_str().or(t.name.as_deref()).unwrap_or_default(),
            t.res.api_version(&t.version),
            t.res.kind,
            unknown
                .iter()
                .map(|u| format!(".{u}: field not declared in schema"))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let list: Vec<String> = unknown
        .iter()
        .map(|u| format!("unknown field \"{u}\""))
        .collect();
    Err(ApiError::bad_request(format!(
        "{} in version \"{}\" cannot be handled as a {}: strict decoding error: {}",
        t.res.kind,
        t.version,
        t.res.kind,
        list.join(", ")
    )))
}

fn parse_body(body: &Bytes) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

fn delete_options(q: &HashMap<String, String>, body: &Bytes) -> Result<DeleteOptions, ApiError> {
    let b = if body.is_empty() {
        json!({})
    } else {
        parse_body(body)?
    };
    let orphan = b["orphanDependents"]
        .as_bool()
        .or_else(|| q.get("orphanDependents").map(|v| v == "true"));
    let propagation = b["propagationPolicy"]
        .as_str()
        .map(String::from)
        .or_else(|| q.get("propagationPolicy").cloned())
        .or_else(|| {
            orphan.map(|o| {
                if o {
                    "Orphan".to_string()
                } else {
                    "Background".to_string()
                }
            })
        });
    let grace_period = b["gracePeriodSeconds"]
        .as_i64()
        .or_else(|| q.get("gracePeriodSeconds").and_then(|g| g.parse().ok()));
    Ok(DeleteOptions {
        grace_period,
        propagation,
        precondition_uid: b["preconditions"]["uid"].as_str().map(String::from),
        precondition_rv: b["preconditions"]["resourceVersion"]
            .as_str()
            .map(String::from),
    })
}

/// The kind of a PATCH, from its content type (apply also needs a field manager).
fn patch_kind(ct: &str, q: &HashMap<String, String>) -> Result<PatchKind, ApiError> {
    Ok(match ct.split(';').next().unwrap_or_default().trim() {
        "application/merge-patch+json" => PatchKind::Merge,
        "application/json-patch+json" => PatchKind::Json,
        "application/strategic-merge-patch+json" => PatchKind::Strategic,
        "application/apply-patch+yaml"
        | "application/apply-patch+json"
        | "application/apply-patch+cbor" => {
            if !q.contains_key("fieldManager") {
                return Err(ApiError::invalid(
                    "PatchOptions",
                    "",
                    &["fieldManager: Required value: is required for apply patch".into()],
                ));
            }
            PatchKind::Apply {
                force: q.get("force").is_some_and(|f| f == "true"),
            }
        }
        other => return Err(ApiError::unsupported_media(other)),
    })
}

/// GET, PUT and PATCH of the `scale` subresource: reads and writes the replica count of the
/// main object (a spec change: generation moves, controllers react).
fn scale_request(
    store: &Store,
    res: &ResourceInfo,
    paths: &scale::ScalePaths,
    ns: &str,
    name: &str,
    method: &Method,
    req: &Req<'_>,
) -> Result<Response, ApiError> {
    let current = store.get(res, ns, name)?;
    let view = scale::to_scale(paths, &current);
    let wanted = match method.as_str() {
        "GET" => return Ok(json_response(200, &view)),
        "PUT" => parse_body(req.body)?,
        "PATCH" => {
            let patch = parse_body(req.body)?;
            let mut doc = view.clone();
            match patch_kind(req.ct, req.q)? {
                PatchKind::Merge => patch::merge_patch(&mut doc, &patch),
                PatchKind::Strategic => patch::strategic_merge(&mut doc, &patch),
                PatchKind::Json => patch::json_patch(&mut doc, &patch)?,
                PatchKind::Apply { .. } => {
                    return Err(ApiError::unsupported_media("application/apply-patch+yaml"));
                }
            }
            doc
        }
        _ => return Err(ApiError::method_not_allowed()),
    };
    check_resource_version(res, name, &wanted, &current)?;
    let n = scale::wanted_replicas(&wanted)?;
    let updated = store.patch(
        res,
        ns,
        name,
        PatchKind::Merge,
        &scale::replicas_patch(paths, n),
        "",
        req.manager,
    )?;
    Ok(json_response(200, &scale::to_scale(paths, &updated)))
}

/// What a resource request carries besides its target.
struct Req<'a> {
    q: &'a HashMap<String, String>,
    manager: &'a str,
    ct: &'a str,
    body: &'a Bytes,
    /// The client asked for a `meta.k8s.io/v1` Table (kubectl's human-readable output).
    as_table: bool,
}

fn serve(app: &AppState, method: &Method, t: Target, req: &Req<'_>) -> Result<Response, ApiError> {
    let (q, manager, ct, body) = (req.q, req.manager, req.ct, req.body);
    let include = table::Include::parse(req.q.get("includeObject").map(String::as_str));
    // dryRun=All: the write runs in full against a copy (a real API server runs admission and
    // validation and skips storage), so a GitOps dry run sees the same errors and result.
    let scratch;
    let store = if q.get("dryRun").is_some_and(|d| d == "All") && method != Method::GET {
        scratch = app.store.scratch();
        &scratch
    } else {
        &app.store
    };
    let res = &t.res;
    let ns_for_obj = if res.namespaced {
        t.ns.clone()
    } else {
        Some(String::new())
    };
    let sub = t.sub.as_deref().unwrap_or_default();
    let sub = if sub == "finalize" { "" } else { sub };
    let one = |v: Value| json_response(200, &present(res, &t.version, v));
    if let (Some(paths), "scale", Some(name)) = (&res.scale, sub, &t.name) {
        let ns = ns_for_obj.as_deref().unwrap_or_default();
        return scale_request(store, res, paths, ns, name, method, req);
    }
    match (method.as_str(), &t.name) {
        ("GET", None) => {
            let sel = Selector::parse(
                q.get("labelSelector").map(String::as_str),
                q.get("fieldSelector").map(String::as_str),
            )?;
            if q.get("watch").is_some_and(|w| w == "true" || w == "1") {
                let timeout = q
                    .get("timeoutSeconds")
                    .and_then(|s| s.parse::<u64>().ok())
                    .unwrap_or(1800);
                return Ok(watch::respond(
                    store,
                    WatchRequest {
                        res: res.clone(),
                        version: t.version.clone(),
                        ns: t.ns.clone(),
                        selector: sel,
                        from: watch::parse_from(q.get("resourceVersion").map(String::as_str))?,
                        bookmarks: q.get("allowWatchBookmarks").is_some_and(|b| b == "true"),
                        send_initial_events: q
                            .get("sendInitialEvents")
                            .is_some_and(|b| b == "true"),
                        timeout: Duration::from_secs(timeout),
                        bookmark_interval: app.bookmark_interval,
                        table: req.as_table.then_some(include),
                    },
                ));
            }
            let limit = q.get("limit").and_then(|l| l.parse().ok());
            let (items, rv, cont) = store.list(
                res,
                t.ns.as_deref(),
                &sel,
                limit,
                q.get("continue").map(String::as_str),
            )?;
            let items: Vec<Value> = items
                .into_iter()
                .map(|o| present(res, &t.version, o))
                .collect();
            let mut meta = json!({"resourceVersion": rv.to_string()});
            if let Some(c) = cont {
                meta["continue"] = json!(c);
            }
            if req.as_table {
                return Ok(json_response(
                    200,
                    &table::table(res, &t.version, &items, include, meta, true),
                ));
            }
            Ok(json_response(
                200,
                &json!({"kind": format!("{}List", res.kind), "apiVersion": res.api_version(&t.version), "metadata": meta, "items": items}),
            ))
        }
        ("GET", Some(name)) => {
            let obj = store.get(res, ns_for_obj.as_deref().unwrap_or_default(), name)?;
            if req.as_table {
                let obj = present(res, &t.version, obj);
                let meta = json!({"resourceVersion": obj["metadata"]["resourceVersion"]});
                return Ok(json_response(
                    200,
                    &table::table(res, &t.version, &[obj], include, meta, true),
                ));
            }
            Ok(one(obj))
        }
        ("POST", None) => {
            let ns = ns_for_obj.ok_or_else(ApiError::route_not_found)?;
            let obj = stored_form(res, parse_body(body)?, false);
            let created = store.create(res, &ns, obj, manager)?;
            Ok(json_response(201, &present(res, &t.version, created)))
        }
        ("POST", Some(name)) if sub == "token" => app.token_request(
            ns_for_obj.as_deref().unwrap_or_default(),
            name,
            &parse_body(body)?,
        ),
        ("POST", Some(name)) if sub == "binding" => {
            let b = parse_body(body)?;
            let node = b["target"]["name"]
                .as_str()
                .ok_or_else(|| ApiError::bad_request("binding target name required"))?;
            store.bind(res, ns_for_obj.as_deref().unwrap_or_default(), name, node)?;
            Ok(json_response(
                201,
                &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
            ))
        }
        ("PUT", Some(name)) => {
            let obj = stored_form(res, parse_body(body)?, false);
            Ok(one(store.replace(
                res,
                ns_for_obj.as_deref().unwrap_or_default(),
                name,
                obj,
                sub,
                manager,
            )?))
        }
        ("PATCH", Some(name)) => {
            let kind = patch_kind(ct, q)?;
            let patch = stored_form(res, parse_body(body)?, matches!(kind, PatchKind::Json));
            let out = store.patch(
                res,
                ns_for_obj.as_deref().unwrap_or_default(),
                name,
                kind,
                &patch,
                sub,
                manager,
            )?;
            Ok(one(out))
        }
        ("DELETE", Some(name)) => {
            let opts = delete_options(q, body)?;
            Ok(one(store.delete(
                res,
                ns_for_obj.as_deref().unwrap_or_default(),
                name,
                &opts,
            )?))
        }
        ("DELETE", None) => {
            let opts = delete_options(q, body)?;
            let sel = Selector::parse(
                q.get("labelSelector").map(String::as_str),
                q.get("fieldSelector").map(String::as_str),
            )?;
            let gone = store.delete_collection(res, t.ns.as_deref(), &sel, &opts)?;
            let items: Vec<Value> = gone
                .into_iter()
                .map(|o| present(res, &t.version, o))
                .collect();
            Ok(json_response(
                200,
                &json!({"kind": format!("{}List", res.kind), "apiVersion": res.api_version(&t.version), "metadata": {"resourceVersion": store.current_rv().to_string()}, "items": items}),
            ))
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}
