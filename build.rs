//! Compiles the gRPC contract, `proto/tidings/v1/notifications.proto`, with protox (a
//! protobuf compiler in Rust), so building Tidings needs no system `protoc`. The encoded
//! descriptor set is kept too: the server answers reflection requests with it.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/tidings/v1/notifications.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("tidings_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
