//! Compiles the gRPC contract, `../proto/tidings/v1/notifications.proto`, into a client for the
//! `grpc` transport, with protox (a protobuf compiler in Rust) as the server's build.rs does:
//! the bench builds on a fresh machine without a system `protoc`, and from the committed
//! contract, so it measures what independent clients see.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "../proto/tidings/v1/notifications.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["../proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .compile_fds(descriptors)?;
    Ok(())
}
