//! Compiles `proto/runner.proto` with protox (a protobuf compiler in Rust, so
//! no `protoc` is needed) and generates the tonic client and server.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/runner.proto");
    let fds = protox::compile(["proto/runner.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
