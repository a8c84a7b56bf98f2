//! Service-account tokens: the TokenRequest subresource issues them, bearer authentication
//! checks them. Requests without a token are still served (as the cluster admin), which a
//! real server would refuse; the README says so.

use std::collections::HashMap;
use std::io::Read;
use std::sync::Mutex;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

use super::error::ApiError;
use super::time;

/// The audience a real API server puts in tokens by default (`--api-audiences`).
pub const DEFAULT_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";
/// As a real server: at least 10 minutes, at most 48 hours (longer requests are capped).
const MIN_EXPIRATION: i64 = 600;
const MAX_EXPIRATION: i64 = 48 * 3600;
/// The user a request without credentials acts as.
pub const ADMIN_USER: &str = "quiver-local-admin";

/// Who a token was issued to.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenInfo {
    pub namespace: String,
    pub service_account: String,
    pub sa_uid: String,
    /// The pod the token is bound to: it stops working when that pod is gone.
    pub pod: Option<(String, String)>,
    /// Unix seconds.
    pub expires: i64,
}

impl TokenInfo {
    pub fn username(&self) -> String {
        format!(
            "system:serviceaccount:{}:{}",
            self.namespace, self.service_account
        )
    }

    /// `userInfo` as a SelfSubjectReview returns it.
    pub fn user_info(&self) -> Value {
        let mut u = json!({
            "username": self.username(),
            "uid": self.sa_uid,
            "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{}", self.namespace), "system:authenticated"],
        });
        if let Some((name, uid)) = &self.pod {
            u["extra"] = json!({
                "authentication.kubernetes.io/pod-name": [name],
                "authentication.kubernetes.io/pod-uid": [uid],
            });
        }
        u
    }
}

pub fn admin_user_info() -> Value {
    json!({"username": ADMIN_USER, "groups": ["system:masters", "system:authenticated"]})
}

#[derive(Default)]
pub struct Tokens {
    issued: Mutex<HashMap<String, TokenInfo>>,
}

/// What a TokenRequest asks for, checked as a real server checks it.
pub struct TokenSpec {
    pub audiences: Vec<String>,
    pub expiration: i64,
    /// (kind, name, uid) of `boundObjectRef`.
    pub bound: Option<(String, String, String)>,
}

impl TokenSpec {
    pub fn parse(body: &Value, sa: &str) -> Result<Self, ApiError> {
        let spec = &body["spec"];
        let audiences: Vec<String> = spec["audiences"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .filter(|a: &Vec<String>| !a.is_empty())
            .unwrap_or_else(|| vec![DEFAULT_AUDIENCE.to_string()]);
        let expiration = spec["expirationSeconds"].as_i64().unwrap_or(3600);
        if expiration < MIN_EXPIRATION {
            return Err(ApiError::invalid(
                "TokenRequest.authentication.k8s.io",
                sa,
                &[format!(
                    "spec.expirationSeconds: Invalid value: {expiration}: may not specify a duration less than 10 minutes"
                )],
            ));
        }
        let bound = match &spec["boundObjectRef"] {
            Value::Null => None,
            r => {
                let kind = r["kind"].as_str().unwrap_or_default().to_string();
                if !matches!(kind.as_str(), "Pod" | "Secret" | "Node") {
                    return Err(ApiError::invalid(
                        "TokenRequest.authentication.k8s.io",
                        sa,
                        &[format!(
                            "spec.boundObjectRef.kind: Unsupported value: \"{kind}\": supported values: \"Pod\", \"Secret\", \"Node\""
                        )],
                    ));
                }
                Some((
                    kind,
                    r["name"].as_str().unwrap_or_default().to_string(),
                    r["uid"].as_str().unwrap_or_default().to_string(),
                ))
            }
        };
        Ok(Self {
            audiences,
            expiration: expiration.min(MAX_EXPIRATION),
            bound,
        })
    }
}

fn random_bytes(n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    let filled = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .is_ok();
    if !filled {
        // No /dev/urandom: fall back to the store's generator (tokens stay unique, if not
        // unguessable; this server is for one machine's tests).
        for chunk in buf.chunks_mut(8) {
            let r = time::next_random().to_le_bytes();
            chunk.copy_from_slice(&r[..chunk.len()]);
        }
    }
    buf
}

impl Tokens {
    /// Issues a token shaped like a real service-account JWT (the claims a client may
    /// decode); it is checked by lookup, so the signature part is random bytes.
    pub fn issue(&self, info: TokenInfo, audiences: &[String]) -> String {
        let now = time::unix_now();
        let mut k8s = json!({
            "namespace": info.namespace,
            "serviceaccount": {"name": info.service_account, "uid": info.sa_uid},
        });
        if let Some((name, uid)) = &info.pod {
            k8s["pod"] = json!({"name": name, "uid": uid});
        }
        let claims = json!({
            "aud": audiences, "exp": info.expires, "iat": now, "nbf": now,
            "iss": DEFAULT_AUDIENCE, "sub": info.username(), "kubernetes.io": k8s,
        });
        let token = format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","kid":"quiver-local"}"#),
            URL_SAFE_NO_PAD.encode(claims.to_string()),
            URL_SAFE_NO_PAD.encode(random_bytes(32)),
        );
        self.issued
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(token.clone(), info);
        token
    }

    /// The holder of a bearer token, if the token is known and not expired; the caller
    /// checks that a bound pod still exists.
    pub fn lookup(&self, token: &str) -> Option<TokenInfo> {
        let mut issued = self.issued.lock().unwrap_or_else(|e| e.into_inner());
        let now = time::unix_now();
        issued.retain(|_, t| t.expires > now);
        issued.get(token).cloned()
    }
}

/// The bearer token of a request, if it carries one.
pub fn bearer(header: Option<&str>) -> Option<&str> {
    let h = header?.trim();
    let (scheme, token) = h.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
        .filter(|t| !t.is_empty())
}

pub fn unauthorized() -> ApiError {
    ApiError::unauthorized()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(expires: i64) -> TokenInfo {
        TokenInfo {
            namespace: "ns".into(),
            service_account: "reader".into(),
            sa_uid: "u1".into(),
            pod: Some(("p".into(), "u2".into())),
            expires,
        }
    }

    #[test]
    fn issued_tokens_are_found_until_they_expire() {
        let t = Tokens::default();
        let live = t.issue(info(time::unix_now() + 600), &[DEFAULT_AUDIENCE.into()]);
        let dead = t.issue(info(time::unix_now() - 1), &[]);
        assert_ne!(live, dead);
        assert_eq!(live.split('.').count(), 3, "JWT-shaped");
        let found = t.lookup(&live).expect("live token");
        assert_eq!(found.username(), "system:serviceaccount:ns:reader");
        assert_eq!(
            found.user_info()["extra"]["authentication.kubernetes.io/pod-name"],
            json!(["p"])
        );
        assert!(t.lookup(&dead).is_none());
        assert!(t.lookup("made-up").is_none());
        let claims = URL_SAFE_NO_PAD
            .decode(live.split('.').nth(1).expect("claims"))
            .expect("base64");
        let claims: Value = serde_json::from_slice(&claims).expect("json");
        assert_eq!(claims["kubernetes.io"]["namespace"], "ns");
    }

    #[test]
    fn token_requests_are_checked_like_a_real_server() {
        let s = TokenSpec::parse(&json!({"spec": {}}), "sa").expect("defaults");
        assert_eq!(s.expiration, 3600);
        assert_eq!(s.audiences, [DEFAULT_AUDIENCE]);
        let err = TokenSpec::parse(&json!({"spec": {"expirationSeconds": 60}}), "sa")
            .err()
            .expect("too short");
        assert_eq!(err.code, 422);
        assert!(err.message.contains("10 minutes"), "{}", err.message);
        let capped = TokenSpec::parse(&json!({"spec": {"expirationSeconds": 10_000_000}}), "sa")
            .expect("capped");
        assert_eq!(capped.expiration, MAX_EXPIRATION);
        let err = TokenSpec::parse(
            &json!({"spec": {"boundObjectRef": {"kind": "ConfigMap", "name": "x"}}}),
            "sa",
        )
        .err()
        .expect("bad kind");
        assert_eq!(err.code, 422);
    }

    #[test]
    fn bearer_header_parsing() {
        assert_eq!(bearer(Some("Bearer abc")), Some("abc"));
        assert_eq!(bearer(Some("bearer  abc ")), Some("abc"));
        assert_eq!(bearer(Some("Basic abc")), None);
        assert_eq!(bearer(Some("Bearer ")), None);
        assert_eq!(bearer(None), None);
    }
}

/// What an audit log would show of writes: successful mutating requests (POST, PUT, PATCH,
/// DELETE) per user, with the resource they touched. Tests read it to prove that a
/// controller at rest writes nothing.
#[derive(Default)]
pub struct WriteAudit {
    log: Mutex<Vec<AuditedWrite>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditedWrite {
    pub user: String,
    pub verb: String,
    /// `<plural>[/<sub>]`, e.g. `vectorindexes/status`.
    pub resource: String,
    pub namespace: Option<String>,
    pub name: Option<String>,
}

impl WriteAudit {
    pub fn record(&self, w: AuditedWrite) {
        if let Ok(mut l) = self.log.lock() {
            l.push(w);
        }
    }

    /// Every write so far by `user`.
    pub fn by(&self, user: &str) -> Vec<AuditedWrite> {
        self.log
            .lock()
            .map(|l| l.iter().filter(|w| w.user == user).cloned().collect())
            .unwrap_or_default()
    }
}
