//! The gRPC adapter: proto messages in, domain calls, proto messages out, and
//! the ONE mapping from [`ServiceError`] to `tonic::Status`. `AuthApi` is
//! here; `AccountApi`, whose calls carry a bearer access token, is in
//! `account.rs`; both are implemented by [`GrpcApi`].

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};
use tracing::Instrument as _;

mod account;
mod counted;

pub use counted::{
    Counted, MALFORMED_FRAMING, MALFORMED_MESSAGE, UNKNOWN_METHOD, refuse_malformed_framing,
};

use crate::domain::FieldViolation;
use crate::domain::UserAgent;
use crate::observe::names;
use crate::proto;
use crate::proto::auth_api_server::AuthApi;
use crate::proto::{
    LoginRequest, LoginResponse, LogoutRequest, LogoutResponse, RefreshRequest, RefreshResponse,
    RegisterRequest, RegisterResponse,
};
use crate::service::{AuthService, ClientInfo, LogoutScope, ServiceError};
use crate::token::TokenPair;

/// `AuthApi` and `AccountApi` over an [`AuthService`].
pub struct GrpcApi {
    service: Arc<AuthService>,
    client_address: ClientAddress,
    timeout: std::time::Duration,
}

/// How the client address used for login throttling is found: the TCP
/// peer address, or the entry a trusted proxy added to a forwarding header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAddress {
    /// The forwarding header (`x-forwarded-for`), lower-case; `None`: the
    /// TCP peer address is the client.
    pub header: Option<String>,
    /// Proxies in front of the server that each append the address they
    /// received the request from (at least 1). The client is the entry the
    /// outermost trusted proxy added: the `trusted_hops`-th from the end.
    pub trusted_hops: usize,
}

impl ClientAddress {
    /// The client address, from every field of the header in order read as
    /// one comma-separated list (RFC 9110 §5.3: a repeated field is one
    /// list), taking the entry `trusted_hops` from the end. Entries before
    /// it are whatever the client sent, so they are never read: a client
    /// that sends its own `x-forwarded-for` line (which proxies such as
    /// HAProxy keep as a separate line before theirs) cannot choose its
    /// address. Without the header, with fewer entries than trusted hops,
    /// or when that entry is not an IP address (`unknown`, an obfuscated
    /// RFC 7239 name), the peer address. Canonical form: an IPv4-mapped
    /// IPv6 address is its IPv4 address.
    pub fn resolve<'a>(
        &self,
        fields: impl IntoIterator<Item = &'a [u8]>,
        peer: Option<std::net::IpAddr>,
    ) -> Option<std::net::IpAddr> {
        let forwarded = self.header.as_ref().and_then(|_| {
            // Split as bytes: a byte that is not visible ASCII spoils only
            // its own entry, never the proxy's entry on the same line.
            let entries: Vec<&[u8]> = fields
                .into_iter()
                .flat_map(|field| field.split(|&byte| byte == b','))
                .map(<[u8]>::trim_ascii)
                .filter(|entry| !entry.is_empty())
                .collect();
            let index = entries.len().checked_sub(self.trusted_hops)?;
            parse_ip(std::str::from_utf8(entries.get(index)?).ok()?)
        });
        forwarded.or(peer).map(|ip| ip.to_canonical())
    }
}

impl GrpcApi {
    /// The gRPC service over `service`. Login throttling keys clients by
    /// the address [`ClientAddress::resolve`] finds.
    /// Each RPC gets at most `timeout`; past it, UNAVAILABLE.
    pub fn new(
        service: Arc<AuthService>,
        client_address: ClientAddress,
        timeout: std::time::Duration,
    ) -> Self {
        Self {
            service,
            client_address,
            timeout,
        }
    }

    /// The client address of `request`, for throttling.
    fn client<T>(&self, request: &Request<T>) -> Option<String> {
        let values = (self.client_address.header.as_ref())
            .map(|header| request.metadata().get_all(header.as_str()));
        let fields = (values.iter())
            .flat_map(|values| values.iter())
            .map(|value| value.as_bytes());
        let peer = request.remote_addr().map(|addr| addr.ip());
        self.client_address
            .resolve(fields, peer)
            .map(|ip| ip.to_string())
    }

    /// What `request` tells of its client: the address [`Self::client`]
    /// finds and the `user-agent` metadata, cleaned ([`UserAgent`]).
    fn client_info<T>(&self, request: &Request<T>) -> ClientInfo {
        ClientInfo {
            address: self.client(request),
            user_agent: (request.metadata().get("user-agent"))
                .and_then(|value| UserAgent::from_header(value.as_bytes())),
        }
    }
}

const TOKEN_TYPE: &str = "Bearer";

/// The message of every UNAUTHENTICATED answer to an AccountApi call whose
/// credentials are missing, malformed or refused: one text, so the answer
/// tells nothing of why.
pub const INVALID_ACCESS_TOKEN: &str = "invalid or missing access token";

#[tonic::async_trait]
impl AuthApi for GrpcApi {
    async fn register(
        &self,
        request: Request<RegisterRequest>,
    ) -> Result<Response<RegisterResponse>, Status> {
        observed("Register", self.timeout, async {
            let RegisterRequest { email, password } = request.into_inner();
            let user_id = self.service.register(&email, &password).await?;
            Ok(RegisterResponse {
                user_id: user_id.to_string(),
            })
        })
        .await
    }

    async fn login(
        &self,
        request: Request<LoginRequest>,
    ) -> Result<Response<LoginResponse>, Status> {
        observed("Login", self.timeout, async {
            let client = self.client_info(&request);
            let LoginRequest {
                email,
                password,
                device_name,
            } = request.into_inner();
            let TokenPair {
                access_token,
                refresh_token,
                access_expires_in,
                refresh_expires_in,
            } = self
                .service
                .login(&email, &password, &device_name, &client)
                .await?;
            Ok(LoginResponse {
                access_token,
                refresh_token,
                token_type: TOKEN_TYPE.into(),
                expires_in: access_expires_in,
                refresh_expires_in,
            })
        })
        .await
    }

    async fn refresh(
        &self,
        request: Request<RefreshRequest>,
    ) -> Result<Response<RefreshResponse>, Status> {
        observed("Refresh", self.timeout, async {
            let client = self.client_info(&request);
            let pair = self
                .service
                .refresh(&request.into_inner().refresh_token, &client)
                .await?;
            Ok(RefreshResponse {
                access_token: pair.access_token,
                refresh_token: pair.refresh_token,
                token_type: TOKEN_TYPE.into(),
                expires_in: pair.access_expires_in,
                refresh_expires_in: pair.refresh_expires_in,
            })
        })
        .await
    }

    async fn logout(
        &self,
        request: Request<LogoutRequest>,
    ) -> Result<Response<LogoutResponse>, Status> {
        observed("Logout", self.timeout, async {
            let LogoutRequest {
                refresh_token,
                scope,
            } = request.into_inner();
            let scope = match proto::LogoutScope::try_from(scope) {
                Ok(proto::LogoutScope::Unspecified | proto::LogoutScope::Session) => {
                    LogoutScope::Session
                }
                Ok(proto::LogoutScope::All) => LogoutScope::All,
                Ok(proto::LogoutScope::Others) => LogoutScope::Others,
                Err(_) => {
                    return Err(ServiceError::InvalidArgument(vec![FieldViolation {
                        field: "scope",
                        description: format!("unknown logout scope {scope}"),
                    }]));
                }
            };
            self.service.logout(&refresh_token, scope).await?;
            Ok(LogoutResponse {})
        })
        .await
    }
}

/// An IP address, with or without a port (`192.0.2.1:443`, `[::1]:443`,
/// `[::1]`).
fn parse_ip(text: &str) -> Option<std::net::IpAddr> {
    text.parse()
        .ok()
        .or_else(|| text.parse::<std::net::SocketAddr>().ok().map(|s| s.ip()))
        // `[2001:db8::1]`: an IPv6 address in brackets without a port.
        .or_else(|| text.strip_prefix('[')?.strip_suffix(']')?.parse().ok())
}

/// Runs one RPC inside a `request` span carrying its method (and, once
/// done, its gRPC code and duration in ms), maps its error
/// to a status (logging internals there, inside the span), logs its end with
/// the gRPC code and duration, and records `auth_request_duration_seconds{method}`
/// (requests are counted by [`Counted`], which also sees the ones refused
/// before a handler runs).
/// Requests and responses are never logged: they hold passwords and tokens.
async fn observed<T>(
    method: &'static str,
    timeout: std::time::Duration,
    call: impl Future<Output = Result<T, ServiceError>>,
) -> Result<Response<T>, Status> {
    // `code` and `duration_ms` are filled in at the end, so the span itself
    // (not only its closing event) carries them, e.g. for span exporters.
    let span = tracing::info_span!(
        "request",
        method,
        code = tracing::field::Empty,
        duration_ms = tracing::field::Empty
    );
    let recorder = span.clone();
    async move {
        let started = Instant::now();
        tracing::debug!("request started");
        let result = match tokio::time::timeout(timeout, call).await {
            Ok(result) => result.map(Response::new).map_err(to_status),
            Err(_) => {
                tracing::warn!(timeout_secs = timeout.as_secs(), "request timed out");
                Err(Status::unavailable("request timed out, retry later"))
            }
        };
        let elapsed = started.elapsed();
        let code = result.as_ref().err().map_or(Code::Ok, Status::code);
        let duration_ms = elapsed.as_secs_f64() * 1e3;
        recorder.record("code", tracing::field::debug(code));
        recorder.record("duration_ms", duration_ms);
        tracing::info!(code = ?code, duration_ms, "request finished");
        metrics::histogram!(names::REQUEST_DURATION, "method" => method)
            .record(elapsed.as_secs_f64());
        result
    }
    .instrument(span)
    .await
}

/// Maps a [`ServiceError`] to the status clients see. Internal details are
/// logged here and never sent.
pub fn to_status(error: ServiceError) -> Status {
    match error {
        ServiceError::InvalidArgument(violations) => {
            let fields = violations
                .into_iter()
                .map(|v| tonic_types::FieldViolation::new(v.field, v.description))
                .collect::<Vec<_>>();
            Status::with_error_details(
                Code::InvalidArgument,
                "request has invalid fields",
                ErrorDetails::with_bad_request(fields),
            )
        }
        ServiceError::AlreadyExists => Status::already_exists("email already registered"),
        ServiceError::InvalidCredentials => Status::unauthenticated("invalid email or password"),
        ServiceError::InvalidToken(why) => {
            tracing::info!(reason = %why, "refresh token refused");
            Status::unauthenticated("invalid refresh token")
        }
        ServiceError::InvalidAccessToken(why) => {
            tracing::info!(reason = %why, "access token refused");
            Status::unauthenticated(INVALID_ACCESS_TOKEN)
        }
        ServiceError::NotFound(what) => Status::not_found(format!("{what} not found")),
        // A hint: how long the queue takes to drain depends on the cost and
        // the load, so one second, then the client's own backoff.
        ServiceError::Busy => Status::with_error_details(
            Code::ResourceExhausted,
            "server busy, retry later",
            ErrorDetails::with_retry_info(Some(std::time::Duration::from_secs(1))),
        ),
        ServiceError::Throttled { retry_after } => Status::with_error_details(
            Code::ResourceExhausted,
            "too many failed logins, retry later",
            ErrorDetails::with_retry_info(Some(retry_after)),
        ),
        ServiceError::Unavailable(e) => {
            tracing::warn!(error = %e, "database unavailable");
            Status::unavailable("service temporarily unavailable, retry later")
        }
        ServiceError::Internal(e) => {
            tracing::error!(error = %e, "internal error");
            Status::internal("internal error")
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::ClientAddress;

    fn resolve(hops: usize, fields: &[&str], peer: &str) -> Option<IpAddr> {
        resolve_bytes(
            hops,
            &fields.iter().map(|f| f.as_bytes()).collect::<Vec<_>>(),
            peer,
        )
    }

    fn resolve_bytes(hops: usize, fields: &[&[u8]], peer: &str) -> Option<IpAddr> {
        let rule = ClientAddress {
            header: Some("x-forwarded-for".into()),
            trusted_hops: hops,
        };
        rule.resolve(fields.iter().copied(), peer.parse().ok())
    }

    fn ip(text: &str) -> Option<IpAddr> {
        Some(text.parse().unwrap())
    }

    #[test]
    fn every_line_is_one_list_and_the_trusted_proxys_entry_counts() {
        let peer = "10.0.0.1";
        // One proxy: the last entry, across lines, whatever came before.
        assert_eq!(resolve(1, &["203.0.113.7"], peer), ip("203.0.113.7"));
        assert_eq!(
            resolve(1, &["6.6.6.6, 203.0.113.7"], peer),
            ip("203.0.113.7")
        );
        assert_eq!(
            resolve(1, &["6.6.6.6", "203.0.113.7"], peer),
            ip("203.0.113.7")
        );
        assert_eq!(
            resolve(1, &["1.1.1.1, 6.6.6.6", "203.0.113.7 , "], peer),
            ip("203.0.113.7")
        );
        // Two proxies: the entry the outer one added.
        assert_eq!(
            resolve(2, &["6.6.6.6, 203.0.113.7", "198.51.100.1"], peer),
            ip("203.0.113.7")
        );
        // Ports and IPv4-mapped IPv6 are the same client.
        assert_eq!(
            resolve(1, &["[::ffff:203.0.113.7]:443"], peer),
            ip("203.0.113.7")
        );
        assert_eq!(resolve(1, &["203.0.113.7:8080"], peer), ip("203.0.113.7"));
        assert_eq!(resolve(1, &["[2001:db8::1]"], peer), ip("2001:db8::1"));
        // A byte that is no visible ASCII spoils only its own entry, not
        // the proxy's on the same line.
        let spoiled: &[u8] = b"6.6.6.6\x80, 203.0.113.7";
        assert_eq!(resolve_bytes(1, &[spoiled], peer), ip("203.0.113.7"));
        let spoiled_last: &[u8] = b"203.0.113.7, 6.6.6.6\x80";
        assert_eq!(resolve_bytes(1, &[spoiled_last], peer), ip(peer));
    }

    #[test]
    fn without_a_usable_entry_the_peer_counts() {
        let peer = "10.0.0.1";
        assert_eq!(resolve(1, &[], peer), ip(peer));
        assert_eq!(resolve(1, &["", " , "], peer), ip(peer));
        assert_eq!(resolve(2, &["203.0.113.7"], peer), ip(peer));
        assert_eq!(resolve(1, &["203.0.113.7, unknown"], peer), ip(peer));
        assert_eq!(resolve(1, &["203.0.113.7, _hidden"], peer), ip(peer));
        // No header configured: the peer, whatever the client sends.
        let direct = ClientAddress {
            header: None,
            trusted_hops: 1,
        };
        let line: &[u8] = b"203.0.113.7";
        assert_eq!(direct.resolve([line], peer.parse().ok()), ip(peer));
        assert_eq!(resolve(1, &["1.2.3.4"], "bad"), ip("1.2.3.4"));
        assert_eq!(resolve(1, &[], "bad"), None);
    }
}
