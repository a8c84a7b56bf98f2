//! Output as kubectl prints it (pure): aligned tables, human ages, `-o json|yaml|wide`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use serde::Serialize;

/// What kubectl prints for a value that is not set.
pub const NONE: &str = "<none>";

/// `-o`: the formats of commands whose output is a table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// The table with more columns.
    Wide,
    /// JSON (stable field names, for scripts).
    Json,
    /// YAML (the same document as json).
    Yaml,
}

/// The `-o/--output` flag.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct OutputArg {
    /// Output format: json, yaml, or wide (a table with more columns). Default: a table.
    #[arg(short = 'o', long = "output", value_enum, value_name = "FORMAT")]
    pub output: Option<Format>,
}

impl OutputArg {
    pub fn wide(&self) -> bool {
        self.output == Some(Format::Wide)
    }

    /// The document for json/yaml, None for a table.
    pub fn document<T: Serialize>(&self, value: &T) -> anyhow::Result<Option<String>> {
        Ok(match self.output {
            Some(Format::Json) => Some(format!("{}\n", serde_json::to_string_pretty(value)?)),
            Some(Format::Yaml) => Some(serde_saphyr::to_string(value)?),
            _ => None,
        })
    }
}

/// A table as kubectl prints it: upper-case headers, columns left-aligned and three spaces
/// apart, the last column unpadded. Rows shorter than the headers get empty cells.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let n = headers.len();
    let mut width: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().take(n).enumerate() {
            width[i] = width[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            out.push_str(cell);
            if i + 1 < n {
                let pad = width[i] - cell.chars().count() + 3;
                out.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.truncate(out.trim_end().len());
        out.push('\n');
        out
    };
    let mut out = line(headers.to_vec());
    for row in rows {
        let cells: Vec<&str> = (0..n)
            .map(|i| row.get(i).map(String::as_str).unwrap_or(""))
            .collect();
        out.push_str(&line(cells));
    }
    out
}

/// A duration as kubectl's AGE column prints it (`k8s.io/apimachinery/pkg/util/duration`
/// HumanDuration): `45s`, `3m20s`, `42m`, `5h10m`, `30h`, `3d4h`, `120d`, `2y40d`.
pub fn human_duration(secs: i64) -> String {
    if secs < -1 {
        return "<invalid>".into();
    }
    let s = secs.max(0);
    let (m, h) = (s / 60, s / 3600);
    let d = h / 24;
    let with = |big: i64, unit: &str, small: i64, sunit: &str| {
        if small == 0 {
            format!("{big}{unit}")
        } else {
            format!("{big}{unit}{small}{sunit}")
        }
    };
    if s < 120 {
        format!("{s}s")
    } else if m < 10 {
        with(m, "m", s % 60, "s")
    } else if m < 180 {
        format!("{m}m")
    } else if h < 8 {
        with(h, "h", m % 60, "m")
    } else if h < 48 {
        format!("{h}h")
    } else if h < 24 * 8 {
        with(d, "d", h % 24, "h")
    } else if h < 24 * 365 * 2 {
        format!("{d}d")
    } else if h < 24 * 365 * 8 {
        with(d / 365, "y", d % 365, "d")
    } else {
        format!("{}y", d / 365)
    }
}

/// The age of `t` at `now`, `<unknown>` when not set.
pub fn age(t: Option<&Time>, now: Timestamp) -> String {
    match t {
        Some(t) => human_duration(now.as_second() - t.0.as_second()),
        None => "<unknown>".into(),
    }
}

/// A recall figure as the status keeps it (4 decimals), or `<none>`.
pub fn recall(r: Option<f64>) -> String {
    r.map(|r| format!("{r:.4}")).unwrap_or_else(|| NONE.into())
}

/// `value` or `<none>`.
pub fn or_none(v: Option<impl ToString>) -> String {
    v.map(|v| v.to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| NONE.into())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns_three_spaces_apart() {
        let t = table(
            &["NAME", "PHASE", "AGE"],
            &[
                vec!["docs".into(), "Ready".into(), "5m".into()],
                vec!["products-long".into(), "Building".into()],
            ],
        );
        assert_eq!(
            t,
            "NAME            PHASE      AGE\n\
             docs            Ready      5m\n\
             products-long   Building\n"
        );
        assert_eq!(table(&["A"], &[]), "A\n");
    }

    #[test]
    fn ages_read_like_kubectl() {
        for (secs, want) in [
            (-5, "<invalid>"),
            (-1, "0s"),
            (0, "0s"),
            (45, "45s"),
            (119, "119s"),
            (120, "2m"),
            (200, "3m20s"),
            (42 * 60, "42m"),
            (179 * 60, "179m"),
            (5 * 3600 + 600, "5h10m"),
            (6 * 3600, "6h"),
            (30 * 3600, "30h"),
            (3 * 86400 + 4 * 3600, "3d4h"),
            (120 * 86400, "120d"),
            (800 * 86400, "2y70d"),
            (9 * 365 * 86400, "9y"),
        ] {
            assert_eq!(human_duration(secs), want, "{secs}");
        }
    }

    #[test]
    fn missing_values_print_as_none() {
        assert_eq!(recall(None), "<none>");
        assert_eq!(recall(Some(0.99512)), "0.9951");
        assert_eq!(or_none(None::<String>), "<none>");
        assert_eq!(or_none(Some("")), "<none>");
        assert_eq!(or_none(Some(3)), "3");
        assert_eq!(age(None, Timestamp::UNIX_EPOCH), "<unknown>");
    }

    #[test]
    fn documents_in_json_and_yaml() {
        let v = serde_json::json!({"name": "docs", "versions": [{"name": "v1-0a0b0c0d"}]});
        let json = OutputArg {
            output: Some(Format::Json),
        };
        let doc = json.document(&v).unwrap().unwrap();
        assert_eq!(serde_json::from_str::<serde_json::Value>(&doc).unwrap(), v);
        let yaml = OutputArg {
            output: Some(Format::Yaml),
        };
        let doc = yaml.document(&v).unwrap().unwrap();
        assert!(doc.contains("name: docs"), "{doc}");
        assert!(doc.contains("v1-0a0b0c0d"), "{doc}");
        assert!(OutputArg::default().document(&v).unwrap().is_none());
        assert!(
            OutputArg {
                output: Some(Format::Wide)
            }
            .document(&v)
            .unwrap()
            .is_none()
        );
    }
}
