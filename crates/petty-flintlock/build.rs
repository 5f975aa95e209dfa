//! Generates Flintlock's gRPC client and server (tonic, prost) from the
//! vendored `.proto` files, compiled by `protox`: no `protoc` is needed.

fn main() {
    let protos = [
        "proto/flintlock/api/services/microvm/v1alpha1/microvms.proto",
        "proto/flintlock/api/types/microvm.proto",
    ];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"]).expect("compiling Flintlock's .proto files");
    tonic_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)
        .expect("generating Flintlock's gRPC code");
}
