//! Kinds a real server stores once and serves through two APIs. `events.k8s.io/v1` Events
//! are core/v1 Events with some fields renamed (the real conversion, field by field), so an
//! event a controller records with kube-runtime's `Recorder` shows in `kubectl describe`.

use serde_json::{Map, Value};

use super::registry::ResourceInfo;

/// (events.k8s.io/v1 name, core/v1 name) of every field the two versions name apart.
const EVENT_FIELDS: &[(&str, &str)] = &[
    ("regarding", "involvedObject"),
    ("note", "message"),
    ("reportingController", "reportingComponent"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
];

pub fn is_events_api(res: &ResourceInfo) -> bool {
    res.group == "events.k8s.io" && res.plural == "events"
}

fn rename(obj: &mut Value, to_core: bool) {
    let Some(m) = obj.as_object_mut() else { return };
    let mut out = Map::with_capacity(m.len());
    for (k, v) in std::mem::take(m) {
        let k = EVENT_FIELDS
            .iter()
            .find_map(|(ev, core)| match to_core {
                true if k == *ev => Some(core.to_string()),
                false if k == *core => Some(ev.to_string()),
                _ => None,
            })
            .unwrap_or(k);
        out.insert(k, v);
    }
    *m = out;
}

/// An events.k8s.io object (or merge/apply patch of one) in its stored core/v1 form.
pub fn event_to_core(obj: &mut Value) {
    rename(obj, true);
}

/// A stored core/v1 Event as events.k8s.io/v1 serves it.
pub fn event_from_core(obj: &mut Value) {
    rename(obj, false);
}

/// A JSON patch against the events.k8s.io form, as paths of the stored form.
pub fn event_json_patch_to_core(ops: &mut Value) {
    for op in ops
        .as_array_mut()
        .map(Vec::as_mut_slice)
        .unwrap_or_default()
    {
        for key in ["path", "from"] {
            let Some(p) = op[key].as_str() else { continue };
            let mut parts = p.splitn(3, '/');
            let (_, first, rest) = (parts.next(), parts.next(), parts.next());
            if let Some(first) = first
                && let Some((_, core)) = EVENT_FIELDS.iter().find(|(ev, _)| *ev == first)
            {
                op[key] = Value::String(match rest {
                    Some(r) => format!("/{core}/{r}"),
                    None => format!("/{core}"),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn events_round_trip_between_the_two_apis() {
        let ev = json!({"metadata": {"name": "e"}, "regarding": {"name": "p"}, "note": "hi",
                        "reportingController": "c", "reason": "R", "series": {"count": 2}});
        let mut core = ev.clone();
        event_to_core(&mut core);
        assert_eq!(core["involvedObject"]["name"], "p");
        assert_eq!(core["message"], "hi");
        assert_eq!(core["reportingComponent"], "c");
        assert_eq!(core["series"]["count"], 2);
        assert!(core.get("note").is_none());
        event_from_core(&mut core);
        assert_eq!(core, ev);
        let mut ops = json!([{"op": "replace", "path": "/note", "value": "x"},
                             {"op": "add", "path": "/regarding/name", "value": "q"},
                             {"op": "test", "path": "/reason", "value": "R"}]);
        event_json_patch_to_core(&mut ops);
        assert_eq!(ops[0]["path"], "/message");
        assert_eq!(ops[1]["path"], "/involvedObject/name");
        assert_eq!(ops[2]["path"], "/reason");
    }
}
