//! The gRPC adapter: proto messages in, domain calls, proto messages out, and
//! the ONE mapping from [`ServiceError`] to `tonic::Status`.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};
use tracing::Instrument as _;

use crate::domain::FieldViolation;
use crate::observe::names;
use crate::proto;
use crate::proto::auth_api_server::AuthApi;
use crate::proto::{
    LoginRequest, LoginResponse, LogoutRequest, LogoutResponse, RefreshRequest, RefreshResponse,
    RegisterRequest, RegisterResponse,
};
use crate::service::{AuthService, LogoutScope, ServiceError};
use crate::token::TokenPair;

/// `AuthApi` over an [`AuthService`].
pub struct GrpcApi {
    service: Arc<AuthService>,
    client_ip_header: Option<String>,
    timeout: std::time::Duration,
}

impl GrpcApi {
    /// The gRPC service over `service`. Login throttling keys clients by
    /// the TCP peer address, or, when `client_ip_header` (e.g.
    /// `x-forwarded-for`) is set, by the last address in that header — the
    /// one the trusted proxy in front appended; entries before it are the
    /// client's to forge. A value that is not an IP address is ignored for
    /// the peer address.
    /// Each RPC gets at most `timeout`; past it, UNAVAILABLE.
    pub fn new(
        service: Arc<AuthService>,
        client_ip_header: Option<String>,
        timeout: std::time::Duration,
    ) -> Self {
        Self {
            service,
            client_ip_header,
            timeout,
        }
    }

    /// The client address of `request`, for throttling, in canonical form
    /// (an IPv4-mapped IPv6 address is its IPv4 address).
    fn client<T>(&self, request: &Request<T>) -> Option<String> {
        let forwarded = self.client_ip_header.as_ref().and_then(|header| {
            let value = request.metadata().get(header.as_str())?.to_str().ok()?;
            parse_ip(value.rsplit(',').next()?.trim())
        });
        forwarded
            .or_else(|| request.remote_addr().map(|addr| addr.ip()))
            .map(|ip| ip.to_canonical().to_string())
    }
}

const TOKEN_TYPE: &str = "Bearer";

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
            let client = self.client(&request);
            let LoginRequest { email, password } = request.into_inner();
            let TokenPair {
                access_token,
                refresh_token,
                access_expires_in,
                refresh_expires_in,
            } = self
                .service
                .login(&email, &password, client.as_deref())
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
            let pair = self
                .service
                .refresh(&request.into_inner().refresh_token)
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

/// An IP address, with or without a port (`192.0.2.1:443`, `[::1]:443`).
fn parse_ip(text: &str) -> Option<std::net::IpAddr> {
    text.parse()
        .ok()
        .or_else(|| text.parse::<std::net::SocketAddr>().ok().map(|s| s.ip()))
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

/// The AuthApi service, counting every request it answers in
/// `auth_requests_total{method,code}`: the handlers' answers and also those
/// tonic gives before a handler runs (a body that is not valid protobuf:
/// INVALID_ARGUMENT; a message over the size limit: OUT_OF_RANGE). The code
/// is the response's `grpc-status` header, which unary errors carry
/// (trailers-only responses); a response without it is a success. Requests
/// whose client went away before the answer are not counted.
#[derive(Clone)]
pub struct Counted<S>(pub S);

impl<S: tonic::server::NamedService> tonic::server::NamedService for Counted<S> {
    const NAME: &'static str = S::NAME;
}

type HttpRequest = tonic::codegen::http::Request<tonic::body::Body>;
type HttpResponse = tonic::codegen::http::Response<tonic::body::Body>;

impl<S> tonic::codegen::Service<HttpRequest> for Counted<S>
where
    S: tonic::codegen::Service<
            HttpRequest,
            Response = HttpResponse,
            Error = std::convert::Infallible,
        >,
    S::Future: Send + 'static,
{
    type Response = HttpResponse;
    type Error = std::convert::Infallible;
    type Future = tonic::codegen::BoxFuture<HttpResponse, std::convert::Infallible>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: HttpRequest) -> Self::Future {
        // `/realchat.auth.v1.AuthApi/Login` -> `Login`.
        let method = request
            .uri()
            .path()
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_owned();
        let answer = self.0.call(request);
        Box::pin(async move {
            let response = answer.await?;
            let code = response
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok()?.parse::<i32>().ok())
                .map_or(Code::Ok, Code::from_i32);
            metrics::counter!(names::REQUESTS, "method" => method, "code" => format!("{code:?}"))
                .increment(1);
            Ok(response)
        })
    }
}
