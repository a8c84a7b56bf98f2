//! Request bodies in Kubernetes' protobuf encoding (`application/vnd.kubernetes.protobuf`),
//! decoded to the JSON form the rest of the server works on. Answers stay JSON: clients pick
//! their decoder by the response's content type.
//!
//! Covered: the envelope (`k8s\0` + `runtime.Unknown`), `ObjectMeta` (every field but
//! `selfLink`-era leftovers, which are skipped), the core/v1 kinds Helm writes its release
//! records as: `Secret` (its default storage driver) and `ConfigMap` (its `configmap`
//! driver), and the `DeleteOptions` it deletes them with. Any other kind is refused with 415 and a message naming it, as a server without
//! that kind's protobuf codec would.

use serde_json::{Map, Value, json};

use super::error::ApiError;

const MAGIC: &[u8] = b"k8s\0";

/// One field of a protobuf message.
enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = *self.buf.get(self.pos).ok_or("truncated varint")?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err("varint longer than 10 bytes".into())
    }

    /// The next (field number, value), or None at the end.
    fn next(&mut self) -> Result<Option<(u32, Field<'a>)>, String> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let number = u32::try_from(key >> 3).map_err(|_| "field number out of range")?;
        let field = match key & 7 {
            0 => Field::Varint(self.varint()?),
            1 | 5 => {
                let n = if key & 7 == 1 { 8 } else { 4 };
                if self.pos + n > self.buf.len() {
                    return Err("truncated fixed-width field".into());
                }
                self.pos += n;
                Field::Fixed
            }
            2 => {
                let len = usize::try_from(self.varint()?).map_err(|_| "length out of range")?;
                let end = self.pos.checked_add(len).filter(|e| *e <= self.buf.len());
                let end = end.ok_or("truncated length-delimited field")?;
                let b = &self.buf[self.pos..end];
                self.pos = end;
                Field::Bytes(b)
            }
            w => return Err(format!("unsupported wire type {w}")),
        };
        Ok(Some((number, field)))
    }
}

fn text(b: &[u8]) -> Result<String, String> {
    String::from_utf8(b.to_vec()).map_err(|_| "a string field is not UTF-8".to_string())
}

fn b64(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// A map entry message: (key, value bytes).
fn entry(b: &[u8]) -> Result<(String, &[u8]), String> {
    let mut r = Reader::new(b);
    let (mut k, mut v): (String, &[u8]) = (String::new(), &[]);
    while let Some((n, f)) = r.next()? {
        match (n, f) {
            (1, Field::Bytes(b)) => k = text(b)?,
            (2, Field::Bytes(b)) => v = b,
            _ => {}
        }
    }
    Ok((k, v))
}

/// `metav1.Time`: seconds and nanos → RFC 3339 (seconds precision, as the JSON form has).
fn time(b: &[u8]) -> Result<Value, String> {
    let mut r = Reader::new(b);
    let mut secs: i64 = 0;
    while let Some((n, f)) = r.next()? {
        if let (1, Field::Varint(v)) = (n, f) {
            secs = v as i64;
        }
    }
    Ok(json!(super::time::rfc3339(secs)))
}

fn owner_reference(b: &[u8]) -> Result<Value, String> {
    let mut r = Reader::new(b);
    let mut o = Map::new();
    while let Some((n, f)) = r.next()? {
        match (n, f) {
            (1, Field::Bytes(b)) => o.insert("kind".into(), json!(text(b)?)),
            (3, Field::Bytes(b)) => o.insert("name".into(), json!(text(b)?)),
            (4, Field::Bytes(b)) => o.insert("uid".into(), json!(text(b)?)),
            (5, Field::Bytes(b)) => o.insert("apiVersion".into(), json!(text(b)?)),
            (6, Field::Varint(v)) => o.insert("controller".into(), json!(v != 0)),
            (7, Field::Varint(v)) => o.insert("blockOwnerDeletion".into(), json!(v != 0)),
            _ => None,
        };
    }
    Ok(Value::Object(o))
}

fn managed_fields_entry(b: &[u8]) -> Result<Value, String> {
    let mut r = Reader::new(b);
    let mut o = Map::new();
    while let Some((n, f)) = r.next()? {
        match (n, f) {
            (1, Field::Bytes(b)) => o.insert("manager".into(), json!(text(b)?)),
            (2, Field::Bytes(b)) => o.insert("operation".into(), json!(text(b)?)),
            (3, Field::Bytes(b)) => o.insert("apiVersion".into(), json!(text(b)?)),
            (4, Field::Bytes(b)) => o.insert("time".into(), time(b)?),
            (6, Field::Bytes(b)) => o.insert("fieldsType".into(), json!(text(b)?)),
            (7, Field::Bytes(b)) => {
                // FieldsV1 { raw = 1 }: the JSON of the field set.
                let mut fr = Reader::new(b);
                let mut raw = Value::Null;
                while let Some((n, f)) = fr.next()? {
                    if let (1, Field::Bytes(b)) = (n, f) {
                        raw = serde_json::from_slice(b).map_err(|e| format!("fieldsV1: {e}"))?;
                    }
                }
                o.insert("fieldsV1".into(), raw)
            }
            (8, Field::Bytes(b)) => o.insert("subresource".into(), json!(text(b)?)),
            _ => None,
        };
    }
    Ok(Value::Object(o))
}

fn object_meta(b: &[u8]) -> Result<Value, String> {
    let mut r = Reader::new(b);
    let mut m = Map::new();
    let push = |m: &mut Map<String, Value>, key: &str, v: Value| {
        let slot = m.entry(key.to_string()).or_insert_with(|| json!([]));
        if let Some(a) = slot.as_array_mut() {
            a.push(v);
        }
    };
    let put = |m: &mut Map<String, Value>, key: &str, k: String, v: Value| {
        let slot = m.entry(key.to_string()).or_insert_with(|| json!({}));
        if let Some(o) = slot.as_object_mut() {
            o.insert(k, v);
        }
    };
    while let Some((n, f)) = r.next()? {
        match (n, f) {
            (1, Field::Bytes(b)) => _ = m.insert("name".into(), json!(text(b)?)),
            (2, Field::Bytes(b)) => _ = m.insert("generateName".into(), json!(text(b)?)),
            (3, Field::Bytes(b)) => _ = m.insert("namespace".into(), json!(text(b)?)),
            (5, Field::Bytes(b)) => _ = m.insert("uid".into(), json!(text(b)?)),
            (6, Field::Bytes(b)) => _ = m.insert("resourceVersion".into(), json!(text(b)?)),
            (7, Field::Varint(v)) => _ = m.insert("generation".into(), json!(v as i64)),
            (8, Field::Bytes(b)) => _ = m.insert("creationTimestamp".into(), time(b)?),
            (9, Field::Bytes(b)) => _ = m.insert("deletionTimestamp".into(), time(b)?),
            (10, Field::Varint(v)) => {
                _ = m.insert("deletionGracePeriodSeconds".into(), json!(v as i64))
            }
            (11, Field::Bytes(b)) => {
                let (k, v) = entry(b)?;
                put(&mut m, "labels", k, json!(text(v)?));
            }
            (12, Field::Bytes(b)) => {
                let (k, v) = entry(b)?;
                put(&mut m, "annotations", k, json!(text(v)?));
            }
            (13, Field::Bytes(b)) => push(&mut m, "ownerReferences", owner_reference(b)?),
            (14, Field::Bytes(b)) => push(&mut m, "finalizers", json!(text(b)?)),
            (17, Field::Bytes(b)) => push(&mut m, "managedFields", managed_fields_entry(b)?),
            _ => {}
        }
    }
    Ok(Value::Object(m))
}

/// The kind's fields after `metadata` (field 1): Secret or ConfigMap.
fn core_v1(kind: &str, raw: &[u8]) -> Result<Value, String> {
    let mut r = Reader::new(raw);
    let mut o = Map::new();
    o.insert("apiVersion".into(), json!("v1"));
    o.insert("kind".into(), json!(kind));
    let put = |o: &mut Map<String, Value>, key: &str, k: String, v: Value| {
        let slot = o.entry(key.to_string()).or_insert_with(|| json!({}));
        if let Some(m) = slot.as_object_mut() {
            m.insert(k, v);
        }
    };
    while let Some((n, f)) = r.next()? {
        match (kind, n, f) {
            (_, 1, Field::Bytes(b)) => _ = o.insert("metadata".into(), object_meta(b)?),
            ("Secret", 2, Field::Bytes(b)) => {
                let (k, v) = entry(b)?;
                put(&mut o, "data", k, json!(b64(v)));
            }
            ("Secret", 3, Field::Bytes(b)) => _ = o.insert("type".into(), json!(text(b)?)),
            ("Secret", 4, Field::Bytes(b)) => {
                let (k, v) = entry(b)?;
                put(&mut o, "stringData", k, json!(text(v)?));
            }
            ("Secret", 5, Field::Varint(v)) | ("ConfigMap", 4, Field::Varint(v)) => {
                _ = o.insert("immutable".into(), json!(v != 0))
            }
            ("ConfigMap", 2, Field::Bytes(b)) => {
                let (k, v) = entry(b)?;
                put(&mut o, "data", k, json!(text(v)?));
            }
            ("ConfigMap", 3, Field::Bytes(b)) => {
                let (k, v) = entry(b)?;
                put(&mut o, "binaryData", k, json!(b64(v)));
            }
            _ => {}
        }
    }
    Ok(Value::Object(o))
}

/// `DeleteOptions`, which Helm sends with the DELETE of its release records.
fn delete_options(api_version: &str, raw: &[u8]) -> Result<Value, String> {
    let mut r = Reader::new(raw);
    let mut o = Map::new();
    o.insert("apiVersion".into(), json!(api_version));
    o.insert("kind".into(), json!("DeleteOptions"));
    while let Some((n, f)) = r.next()? {
        match (n, f) {
            (1, Field::Varint(v)) => _ = o.insert("gracePeriodSeconds".into(), json!(v as i64)),
            (2, Field::Bytes(b)) => {
                let mut p = Reader::new(b);
                let mut pre = Map::new();
                while let Some((n, f)) = p.next()? {
                    match (n, f) {
                        (1, Field::Bytes(b)) => _ = pre.insert("uid".into(), json!(text(b)?)),
                        (2, Field::Bytes(b)) => {
                            _ = pre.insert("resourceVersion".into(), json!(text(b)?))
                        }
                        _ => {}
                    }
                }
                o.insert("preconditions".into(), Value::Object(pre));
            }
            (3, Field::Varint(v)) => _ = o.insert("orphanDependents".into(), json!(v != 0)),
            (4, Field::Bytes(b)) => _ = o.insert("propagationPolicy".into(), json!(text(b)?)),
            (5, Field::Bytes(b)) => {
                let slot = o.entry("dryRun".to_string()).or_insert_with(|| json!([]));
                if let Some(a) = slot.as_array_mut() {
                    a.push(json!(text(b)?));
                }
            }
            _ => {}
        }
    }
    Ok(Value::Object(o))
}

/// Decodes a protobuf request body to its JSON form.
pub fn decode(body: &[u8], content_type: &str) -> Result<Value, ApiError> {
    let bad = |m: String| ApiError::bad_request(format!("protobuf body: {m}"));
    let rest = body
        .strip_prefix(MAGIC)
        .ok_or_else(|| bad("missing the k8s\\0 envelope prefix".into()))?;
    let mut r = Reader::new(rest);
    let (mut api_version, mut kind, mut raw): (String, String, &[u8]) =
        (String::new(), String::new(), &[]);
    while let Some((n, f)) = r.next().map_err(bad)? {
        match (n, f) {
            (1, Field::Bytes(tm)) => {
                let mut t = Reader::new(tm);
                while let Some((n, f)) = t.next().map_err(bad)? {
                    match (n, f) {
                        (1, Field::Bytes(b)) => api_version = text(b).map_err(bad)?,
                        (2, Field::Bytes(b)) => kind = text(b).map_err(bad)?,
                        _ => {}
                    }
                }
            }
            (2, Field::Bytes(b)) => raw = b,
            (3, Field::Bytes(enc)) if !enc.is_empty() => {
                return Err(bad(format!(
                    "content encoding {:?} is not supported",
                    text(enc).unwrap_or_default()
                )));
            }
            _ => {}
        }
    }
    match (api_version.as_str(), kind.as_str()) {
        ("v1", "Secret" | "ConfigMap") => core_v1(&kind, raw).map_err(bad),
        ("v1" | "meta.k8s.io/v1", "DeleteOptions") => {
            delete_options(&api_version, raw).map_err(bad)
        }
        _ => Err(ApiError::unsupported_media(&format!(
            "{content_type} (this server decodes protobuf bodies of core/v1 Secret and ConfigMap only, not {api_version} {kind})"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }

    fn bytes(n: u32, b: &[u8], out: &mut Vec<u8>) {
        varint(u64::from(n) << 3 | 2, out);
        varint(b.len() as u64, out);
        out.extend_from_slice(b);
    }

    fn num(n: u32, v: u64, out: &mut Vec<u8>) {
        varint(u64::from(n) << 3, out);
        varint(v, out);
    }

    fn map_entry(n: u32, k: &str, v: &[u8], out: &mut Vec<u8>) {
        let mut e = Vec::new();
        bytes(1, k.as_bytes(), &mut e);
        bytes(2, v, &mut e);
        bytes(n, &e, out);
    }

    fn envelope(api_version: &str, kind: &str, raw: &[u8]) -> Vec<u8> {
        let mut tm = Vec::new();
        bytes(1, api_version.as_bytes(), &mut tm);
        bytes(2, kind.as_bytes(), &mut tm);
        let mut u = Vec::new();
        bytes(1, &tm, &mut u);
        bytes(2, raw, &mut u);
        [MAGIC, &u].concat()
    }

    /// A Helm release record as Helm writes it.
    fn release_secret() -> Vec<u8> {
        let mut meta = Vec::new();
        bytes(1, b"sh.helm.release.v1.quiver.v1", &mut meta);
        bytes(3, b"quiver-system", &mut meta);
        map_entry(11, "owner", b"helm", &mut meta);
        map_entry(11, "name", b"quiver", &mut meta);
        map_entry(11, "status", b"deployed", &mut meta);
        let mut t = Vec::new();
        num(1, 1_796_000_000, &mut t);
        bytes(8, &t, &mut meta);
        bytes(14, b"example.com/f", &mut meta);
        let mut raw = Vec::new();
        bytes(1, &meta, &mut raw);
        map_entry(2, "release", &[0, 1, 2, 255], &mut raw);
        bytes(3, b"helm.sh/release.v1", &mut raw);
        num(5, 1, &mut raw);
        envelope("v1", "Secret", &raw)
    }

    #[test]
    fn a_helm_release_secret_decodes_to_its_json_form() {
        let v = decode(&release_secret(), "application/vnd.kubernetes.protobuf").expect("decodes");
        assert_eq!(v["apiVersion"], "v1");
        assert_eq!(v["kind"], "Secret");
        assert_eq!(v["metadata"]["name"], "sh.helm.release.v1.quiver.v1");
        assert_eq!(v["metadata"]["namespace"], "quiver-system");
        assert_eq!(
            v["metadata"]["labels"],
            json!({"owner": "helm", "name": "quiver", "status": "deployed"})
        );
        assert_eq!(v["metadata"]["creationTimestamp"], "2026-11-30T00:53:20Z");
        assert_eq!(v["metadata"]["finalizers"], json!(["example.com/f"]));
        assert_eq!(v["data"]["release"], "AAEC/w==");
        assert_eq!(v["type"], "helm.sh/release.v1");
        assert_eq!(v["immutable"], true);
    }

    #[test]
    fn a_config_map_decodes_with_text_and_binary_data() {
        let mut meta = Vec::new();
        bytes(1, b"cm", &mut meta);
        let mut raw = Vec::new();
        bytes(1, &meta, &mut raw);
        map_entry(2, "a", b"x", &mut raw);
        map_entry(3, "b", b"\x00", &mut raw);
        let v = decode(&envelope("v1", "ConfigMap", &raw), "p").expect("decodes");
        assert_eq!(v["data"], json!({"a": "x"}));
        assert_eq!(v["binaryData"], json!({"b": "AA=="}));
    }

    #[test]
    fn delete_options_decode_with_preconditions_and_propagation() {
        let mut pre = Vec::new();
        bytes(1, b"u-1", &mut pre);
        let mut raw = Vec::new();
        num(1, 0, &mut raw);
        bytes(2, &pre, &mut raw);
        bytes(4, b"Background", &mut raw);
        let v = decode(&envelope("v1", "DeleteOptions", &raw), "p").expect("decodes");
        assert_eq!(v["gracePeriodSeconds"], 0);
        assert_eq!(v["preconditions"]["uid"], "u-1");
        assert_eq!(v["propagationPolicy"], "Background");
    }

    #[test]
    fn bad_bodies_and_other_kinds_are_refused_with_the_reason() {
        let e = decode(b"{}", "p").expect_err("no magic");
        assert!(e.to_string().contains("envelope"), "{e}");
        let mut cut = release_secret();
        cut.truncate(cut.len() - 3);
        let e = decode(&cut, "p").expect_err("truncated");
        assert!(e.to_string().contains("truncated"), "{e}");
        let e = decode(
            &envelope("apps/v1", "Deployment", &[]),
            "application/vnd.kubernetes.protobuf",
        )
        .expect_err("deployment");
        assert!(e.to_string().contains("apps/v1 Deployment"), "{e}");
    }
}
