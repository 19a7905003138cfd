//! RealChat Auth: the identity service as a library, so that `main.rs` stays
//! thin and tests start the whole server in-process.
//!
//! Where a request goes: [`transport`] (the gRPC port's connections and
//! their limits) → [`grpc`] (proto ⇄ domain, error → status) →
//! [`service`] (the rules, one file per group of use-cases, one transaction
//! each) → [`store`] (SQL). Passwords are hashed in [`password`]; tokens are
//! minted in [`token`] and checked by the rules of the verifier crate
//! (`realchat-auth-verifier`), the one implementation the server and
//! downstream services share. Start-up every binary shares is in
//! `realchat-runtime`.

pub mod codec;
pub mod config;
pub mod domain;
pub mod grpc;
pub mod observe;
pub mod password;
pub mod service;
pub mod startup;
pub mod store;
pub mod token;
pub mod transport;

/// Code generated from `proto/realchat/auth/v1/auth_api.proto`.
#[allow(clippy::all, missing_docs)]
pub mod proto {
    tonic::include_proto!("realchat.auth.v1");

    /// The encoded `FileDescriptorSet` of the contract, served by gRPC
    /// server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("auth_descriptor");
}
