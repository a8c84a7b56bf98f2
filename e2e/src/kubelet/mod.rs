//! The process kubelet.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum KubeletError {
    #[error("bad --image entry {0:?}: expected name=path")]
    BadImage(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

pub struct KubeletConfig {
    pub node: String,
    pub root: PathBuf,
    pub images: HashMap<String, PathBuf>,
}

impl KubeletConfig {
    pub fn new(node: String, root: PathBuf, images: HashMap<String, PathBuf>) -> Self {
        Self { node, root, images }
    }
}

pub fn parse_image_table(entries: &[String]) -> Result<HashMap<String, PathBuf>, KubeletError> {
    entries
        .iter()
        .map(|e| {
            e.split_once('=')
                .map(|(k, v)| (k.to_string(), PathBuf::from(v)))
                .ok_or_else(|| KubeletError::BadImage(e.clone()))
        })
        .collect()
}

pub fn read_logs(
    _root: &Path,
    _ns: &str,
    _pod: &str,
    _container: Option<&str>,
) -> Result<String, KubeletError> {
    Ok(String::new())
}

pub async fn run(_client: kube::Client, _cfg: KubeletConfig) {}
