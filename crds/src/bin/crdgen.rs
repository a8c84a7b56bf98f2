//! Writes the `VectorIndex` CustomResourceDefinition to `crds/vectorindex.yaml` and to the Helm
//! chart's copy, `charts/quiver/crds/vectorindex.yaml` (or only to the path given as the only
//! argument; `-` prints it). A test fails when either file differs from the types.

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
    let crate_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let paths = match target {
        Some(t) => vec![PathBuf::from(t)],
        None => vec![
            crate_dir.join("vectorindex.yaml"),
            crate_dir.join("../charts/quiver/crds/vectorindex.yaml"),
        ],
    };
    for path in paths {
        if let Err(e) = std::fs::write(&path, &yaml) {
            eprintln!("crdgen: cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
        eprintln!("crdgen: wrote {}", path.display());
    }
    ExitCode::SUCCESS
}
