//! Writes the `VectorIndex` CustomResourceDefinition to `crds/vectorindex.yaml` (or to the path
//! given as the only argument; `-` prints it).

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let yaml = match quiver_api::crd_yaml() {
        Ok(y) => y,
        Err(e) => {
            eprintln!("crdgen: cannot render the CRD: {e}");
            return ExitCode::FAILURE;
        }
    };
    let target = std::env::args().nth(1);
    if target.as_deref() == Some("-") {
        print!("{yaml}");
        return ExitCode::SUCCESS;
    }
    let path = target
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("vectorindex.yaml"));
    if let Err(e) = std::fs::write(&path, yaml) {
        eprintln!("crdgen: cannot write {}: {e}", path.display());
        return ExitCode::FAILURE;
    }
    eprintln!("crdgen: wrote {}", path.display());
    ExitCode::SUCCESS
}
