//! Generates the CSI spec's gRPC types and services from the vendored `proto/csi/csi.proto`.
//! The proto is compiled by `protox` (pure Rust), so neither this machine nor CI needs
//! `protoc`; tonic-prost-build writes the Rust from the resulting descriptor set.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/csi/csi.proto");
    let descriptors = protox::compile(["csi.proto"], ["proto/csi"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .emit_rerun_if_changed(false)
        .compile_fds(descriptors)?;
    Ok(())
}
