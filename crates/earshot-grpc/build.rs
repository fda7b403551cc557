//! Compiles `proto/earshot/v1/earshot.proto` with protox (a protobuf compiler in Rust: no
//! `protoc` to install) into the tonic service and prost messages, and keeps the encoded
//! descriptor set for server reflection.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let file = "earshot/v1/earshot.proto";
    println!("cargo:rerun-if-changed={}", root.join(file).display());
    let mut compiler = protox::Compiler::new([&root])?;
    // Source info keeps the .proto comments: reflection clients show them.
    compiler.include_source_info(true).include_imports(true);
    compiler.open_file(file)?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("earshot_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;
    // The client has no `connect` (no tonic `transport` feature at build time): callers wrap
    // a channel of their own (`EarshotClient::new(channel)`).
    // `SimilarAnswer` is written by hand (src/wire.rs): the server sends answers encoded
    // straight from the mapping.
    tonic_prost_build::configure()
        .build_transport(false)
        .extern_path(".earshot.v1.SimilarAnswer", "crate::wire::SimilarAnswer")
        .compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}
