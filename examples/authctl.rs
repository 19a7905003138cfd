//! A small command-line gRPC client for trying the service by hand:
//!
//! ```text
//! cargo run --example authctl -- register alice@example.com 'correct horse'
//! cargo run --example authctl -- login alice@example.com 'correct horse'
//! cargo run --example authctl -- refresh <refresh_token>
//! cargo run --example authctl -- logout <refresh_token>
//! ```
//! Prints the response as JSON, or the gRPC status (with any field
//! violations) and exits 1.

use clap::{Parser, Subcommand};
use realchat_auth::proto::auth_api_client::AuthApiClient;
use realchat_auth::proto::{
    LoginRequest, LogoutRequest, RefreshRequest, RefreshResponse, RegisterRequest,
};
use tonic_types::StatusExt as _;

#[derive(Parser)]
#[command(about = "Call RealChat Auth over gRPC")]
struct Cli {
    /// Server address.
    #[arg(long, env = "AUTH_URL", default_value = "http://127.0.0.1:50051")]
    url: String,
    #[command(subcommand)]
    call: Call,
}

#[derive(Subcommand)]
enum Call {
    Register {
        email: String,
        password: String,
    },
    Login {
        email: String,
        password: String,
    },
    Refresh {
        refresh_token: String,
    },
    Logout {
        refresh_token: String,
        /// Which sessions to end.
        #[arg(long, value_enum, default_value = "session")]
        scope: Scope,
    },
}

/// `LogoutScope` values, by name.
#[derive(Clone, Copy, clap::ValueEnum)]
enum Scope {
    Session = 1,
    All = 2,
    Others = 3,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut client = AuthApiClient::connect(cli.url).await?;
    let result = match cli.call {
        Call::Register { email, password } => client
            .register(RegisterRequest { email, password })
            .await
            .map(|r| serde_json::json!({ "user_id": r.into_inner().user_id })),
        Call::Login { email, password } => client
            .login(LoginRequest { email, password })
            .await
            .map(|r| {
                let r = r.into_inner();
                let refreshed = RefreshResponse {
                    access_token: r.access_token,
                    refresh_token: r.refresh_token,
                    token_type: r.token_type,
                    expires_in: r.expires_in,
                    refresh_expires_in: r.refresh_expires_in,
                };
                pair_json(refreshed)
            }),
        Call::Refresh { refresh_token } => client
            .refresh(RefreshRequest { refresh_token })
            .await
            .map(|r| pair_json(r.into_inner())),
        Call::Logout {
            refresh_token,
            scope,
        } => client
            .logout(LogoutRequest {
                refresh_token,
                scope: scope as i32,
            })
            .await
            .map(|_| serde_json::json!({})),
    };
    match result {
        Ok(json) => {
            println!("{json:#}");
            Ok(())
        }
        Err(status) => {
            eprintln!("{:?}: {}", status.code(), status.message());
            if let Some(bad) = status.get_error_details().bad_request() {
                for v in &bad.field_violations {
                    eprintln!("  {}: {}", v.field, v.description);
                }
            }
            std::process::exit(1);
        }
    }
}

/// A token pair as JSON (Login and Refresh answer with the same fields).
fn pair_json(r: RefreshResponse) -> serde_json::Value {
    serde_json::json!({
        "access_token": r.access_token,
        "refresh_token": r.refresh_token,
        "token_type": r.token_type,
        "expires_in": r.expires_in,
        "refresh_expires_in": r.refresh_expires_in,
    })
}
