//! Compiles `proto/` into Rust with tonic's build crate.
//!
//! protoc comes from the `protoc-bin-vendored` crate (a registry package), so a
//! fresh machine needs no system install.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os("PROTOC").is_none() {
        let protoc = protoc_bin_vendored::protoc_bin_path()?;
        // SAFETY: build scripts are single-threaded; nothing else reads the
        // environment concurrently.
        #[allow(unsafe_code)]
        unsafe {
            std::env::set_var("PROTOC", protoc)
        };
    }
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .codec_path("crate::codec::ProtoCodec")
        .file_descriptor_set_path(out_dir.join("auth_descriptor.bin"))
        .compile_protos(&["proto/realchat/auth/v1/auth_api.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
