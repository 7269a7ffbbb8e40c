//! Generates the gRPC types from `proto/warden/v1/*.proto` with protox (a protobuf compiler in
//! Rust), so building warden never needs a system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = [
        "jobs.proto",
        "workers.proto",
        "artifacts.proto",
        "events.proto",
    ]
    .map(|f| root.join("warden/v1").join(f));
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    let descriptors = protox::compile(&files, [&root])?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
