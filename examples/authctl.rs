//! A small command-line gRPC client for trying the service by hand:
//!
//! ```text
//! cargo run --example authctl -- register alice@example.com 'correct horse'
//! cargo run --example authctl -- login alice@example.com 'correct horse' --device-name laptop
//! cargo run --example authctl -- refresh <refresh_token>
//! cargo run --example authctl -- logout <refresh_token>
//! eval "$(cargo run -q --example authctl -- login alice@example.com 'correct horse' --export)"
//! cargo run --example authctl -- account
//! cargo run --example authctl -- sessions --page-size 10
//! cargo run --example authctl -- revoke-session <session_id>
//! cargo run --example authctl -- change-password 'correct horse' 'battery staple'
//! cargo run --example authctl -- delete-account 'battery staple'
//! ```
//! Prints the response as JSON, or the gRPC status (code, message, field
//! violations, retry delay) and exits 1. The `AccountApi` calls send the
//! access token (`--access-token` or `AUTH_ACCESS_TOKEN`) as
//! `authorization: Bearer …`; `--export` prints a token pair as shell
//! `export` lines, so `eval` sets both variables for the next calls.

use anyhow::Context as _;
use chrono::{DateTime, SecondsFormat};
use clap::{Parser, Subcommand};
use realchat_auth::proto::account_api_client::AccountApiClient;
use realchat_auth::proto::auth_api_client::AuthApiClient;
use realchat_auth::proto::{
    ChangePasswordRequest, DeleteAccountRequest, GetAccountRequest, ListSessionsRequest,
    LoginRequest, LogoutRequest, RefreshRequest, RefreshResponse, RegisterRequest,
    RevokeSessionRequest, Session,
};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};
use tonic_types::StatusExt as _;

#[derive(Parser)]
#[command(about = "Call RealChat Auth over gRPC")]
struct Cli {
    /// Server address.
    #[arg(long, env = "AUTH_URL", default_value = "http://127.0.0.1:50051")]
    url: String,
    /// Access token of a Login or Refresh, for the account calls. Its value
    /// is never shown in `--help`.
    #[arg(long, env = "AUTH_ACCESS_TOKEN", hide_env_values = true, global = true)]
    access_token: Option<String>,
    #[command(subcommand)]
    call: Call,
}

#[derive(Subcommand)]
enum Call {
    /// Create an account.
    Register { email: String, password: String },
    /// Start a session; prints the token pair.
    Login {
        email: String,
        password: String,
        /// Name of this device, shown by `sessions`.
        #[arg(long)]
        device_name: Option<String>,
        /// Print `export AUTH_ACCESS_TOKEN=… AUTH_REFRESH_TOKEN=…` lines
        /// instead of JSON, for `eval`.
        #[arg(long)]
        export: bool,
    },
    /// Rotate a refresh token; prints the new pair.
    Refresh {
        #[arg(env = "AUTH_REFRESH_TOKEN", hide_env_values = true)]
        refresh_token: String,
        /// Print `export` lines instead of JSON, as `login --export`.
        #[arg(long)]
        export: bool,
    },
    /// End the refresh token's session (or, with `--scope`, more).
    Logout {
        #[arg(env = "AUTH_REFRESH_TOKEN", hide_env_values = true)]
        refresh_token: String,
        /// Which sessions to end.
        #[arg(long, value_enum, default_value = "session")]
        scope: Scope,
    },
    /// The signed-in account (GetAccount).
    Account,
    /// The account's live sessions, newest first (ListSessions).
    Sessions {
        /// Sessions per page: 0 is the server's default (50), at most 100.
        /// Negative is passed on, to see the server refuse it.
        #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
        page_size: i32,
        /// `next_page_token` of the previous page.
        #[arg(long, default_value = "")]
        page_token: String,
    },
    /// End one of the account's sessions (RevokeSession).
    RevokeSession { session_id: String },
    /// Change the password; every other session ends (ChangePassword).
    ChangePassword {
        current_password: String,
        new_password: String,
    },
    /// Delete the account (DeleteAccount).
    DeleteAccount { password: String },
}

/// `LogoutScope` values, by name.
#[derive(Clone, Copy, clap::ValueEnum)]
enum Scope {
    Session = 1,
    All = 2,
    Others = 3,
}

/// What a successful call prints.
enum Output {
    Json(serde_json::Value),
    /// A token pair as shell `export` lines.
    Export(RefreshResponse),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let channel = Endpoint::from_shared(cli.url.clone())
        .context("--url is not a URL")?
        .connect()
        .await
        .with_context(|| format!("connecting to {}", cli.url))?;
    match call(channel, cli.access_token, cli.call).await? {
        Ok(Output::Json(json)) => println!("{json:#}"),
        Ok(Output::Export(pair)) => {
            // JWTs are base64url and dots: nothing the quotes must escape.
            println!("export AUTH_ACCESS_TOKEN='{}'", pair.access_token);
            println!("export AUTH_REFRESH_TOKEN='{}'", pair.refresh_token);
        }
        Err(status) => {
            print_status(&status);
            std::process::exit(1);
        }
    }
    Ok(())
}

/// Makes the call. The outer error is the client's own (no access token);
/// the inner one is the server's answer.
async fn call(
    channel: Channel,
    access_token: Option<String>,
    call: Call,
) -> anyhow::Result<Result<Output, Status>> {
    let mut auth = AuthApiClient::new(channel.clone());
    let mut account = AccountApiClient::new(channel);
    let token = access_token.as_deref();
    Ok(match call {
        Call::Register { email, password } => auth
            .register(RegisterRequest { email, password })
            .await
            .map(|r| Output::Json(serde_json::json!({ "user_id": r.into_inner().user_id }))),
        Call::Login {
            email,
            password,
            device_name,
            export,
        } => auth
            .login(LoginRequest {
                email,
                password,
                device_name: device_name.unwrap_or_default(),
            })
            .await
            .map(|r| {
                let r = r.into_inner();
                let pair = RefreshResponse {
                    access_token: r.access_token,
                    refresh_token: r.refresh_token,
                    token_type: r.token_type,
                    expires_in: r.expires_in,
                    refresh_expires_in: r.refresh_expires_in,
                };
                pair_output(pair, export)
            }),
        Call::Refresh {
            refresh_token,
            export,
        } => auth
            .refresh(RefreshRequest { refresh_token })
            .await
            .map(|r| pair_output(r.into_inner(), export)),
        Call::Logout {
            refresh_token,
            scope,
        } => auth
            .logout(LogoutRequest {
                refresh_token,
                scope: scope as i32,
            })
            .await
            .map(empty),
        Call::Account => account
            .get_account(bearer(token, GetAccountRequest {})?)
            .await
            .map(|r| {
                let r = r.into_inner();
                Output::Json(serde_json::json!({
                    "user_id": r.user_id,
                    "email": r.email,
                    "created_at": timestamp(r.created_at),
                }))
            }),
        Call::Sessions {
            page_size,
            page_token,
        } => account
            .list_sessions(bearer(
                token,
                ListSessionsRequest {
                    page_size,
                    page_token,
                },
            )?)
            .await
            .map(|r| {
                let r = r.into_inner();
                let sessions: Vec<_> = r.sessions.into_iter().map(session_json).collect();
                Output::Json(serde_json::json!({
                    "sessions": sessions,
                    "next_page_token": r.next_page_token,
                }))
            }),
        Call::RevokeSession { session_id } => account
            .revoke_session(bearer(token, RevokeSessionRequest { session_id })?)
            .await
            .map(empty),
        Call::ChangePassword {
            current_password,
            new_password,
        } => account
            .change_password(bearer(
                token,
                ChangePasswordRequest {
                    current_password,
                    new_password,
                },
            )?)
            .await
            .map(empty),
        Call::DeleteAccount { password } => account
            .delete_account(bearer(token, DeleteAccountRequest { password })?)
            .await
            .map(empty),
    })
}

/// `message` with the access token as `authorization: Bearer …` metadata.
/// Only the account calls ask for it, so the others work without one.
fn bearer<T>(token: Option<&str>, message: T) -> anyhow::Result<Request<T>> {
    let token = token.context(
        "an account call needs an access token: --access-token or AUTH_ACCESS_TOKEN (from `login`)",
    )?;
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}")
            .parse()
            .context("the access token is not valid gRPC metadata")?,
    );
    Ok(request)
}

/// The output of a call whose response has no fields.
fn empty<T>(_: T) -> Output {
    Output::Json(serde_json::json!({}))
}

/// A token pair as JSON (Login and Refresh answer with the same fields), or
/// as `export` lines.
fn pair_output(r: RefreshResponse, export: bool) -> Output {
    if export {
        return Output::Export(r);
    }
    Output::Json(serde_json::json!({
        "access_token": r.access_token,
        "refresh_token": r.refresh_token,
        "token_type": r.token_type,
        "expires_in": r.expires_in,
        "refresh_expires_in": r.refresh_expires_in,
    }))
}

fn session_json(s: Session) -> serde_json::Value {
    serde_json::json!({
        "session_id": s.session_id,
        "current": s.current,
        "device_name": s.device_name,
        "created_at": timestamp(s.created_at),
        "last_refreshed_at": timestamp(s.last_refreshed_at),
        "expires_at": timestamp(s.expires_at),
        "user_agent": s.user_agent,
        "ip_address": s.ip_address,
    })
}

/// A protobuf timestamp as RFC 3339 UTC; unset (or out of range) as `null`.
fn timestamp(t: Option<prost_types::Timestamp>) -> serde_json::Value {
    t.and_then(|t| DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).ok()?))
        .map_or(serde_json::Value::Null, |t| {
            t.to_rfc3339_opts(SecondsFormat::Micros, true).into()
        })
}

/// The status as the contract names it (`UNAUTHENTICATED: …`), with the
/// details a caller acts on: which fields to fix, how long to wait.
fn print_status(status: &Status) {
    eprintln!("{}: {}", code_name(status.code()), status.message());
    let details = status.get_error_details();
    if let Some(bad) = details.bad_request() {
        for v in &bad.field_violations {
            eprintln!("  {}: {}", v.field, v.description);
        }
    }
    if let Some(delay) = details.retry_info().and_then(|r| r.retry_delay) {
        eprintln!("  retry after {:.1} s", delay.as_secs_f64());
    }
}

/// `ResourceExhausted` → `RESOURCE_EXHAUSTED`, the spelling of the gRPC
/// docs, the proto comments and the README.
fn code_name(code: Code) -> String {
    let mut name = String::new();
    for (i, c) in format!("{code:?}").chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            name.push('_');
        }
        name.push(c.to_ascii_uppercase());
    }
    name
}
