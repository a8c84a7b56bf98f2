//! Compiles `proto/quiver/v1/quiver.proto` with a vendored protoc, so building needs no protoc
//! installed on the machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY-free: build scripts are single-threaded; PROTOC is read by prost-build below.
    unsafe { std::env::set_var("PROTOC", protoc) };
    println!("cargo:rerun-if-changed=proto/quiver/v1/quiver.proto");
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_protos(&["proto/quiver/v1/quiver.proto"], &["proto"])?;
    Ok(())
}
