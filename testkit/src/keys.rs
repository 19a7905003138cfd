//! Signing keys written to files, as an operator would provide them.

use std::path::PathBuf;

/// A PKCS#8 Ed25519 key written as PEM to a fresh temporary file, as
/// `openssl genpkey` would; returns the path and the key's DER.
pub fn write_key_file() -> (PathBuf, Vec<u8>) {
    let rng = ring::rand::SystemRandom::new();
    let der = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng)
        .unwrap()
        .as_ref()
        .to_vec();
    let path = std::env::temp_dir().join(format!("rc-test-key-{}.pem", uuid::Uuid::new_v4()));
    std::fs::write(
        &path,
        pem::encode(&pem::Pem::new("PRIVATE KEY", der.clone())),
    )
    .unwrap();
    (path, der)
}
