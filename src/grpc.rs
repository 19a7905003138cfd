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
///
/// `method` is the method's name when the contract declares it for this
/// service ([`proto::FILE_DESCRIPTOR_SET`], the one list of methods), else
/// [`UNKNOWN_METHOD`]: the path is the client's to choose, and a series per
/// made-up name would grow the exposition without bound.
///
/// A request whose gRPC framing is broken (a compressed flag without
/// `grpc-encoding`, a flag other than 0 and 1, a body that ends inside a
/// frame, no message at all) is answered INVALID_ARGUMENT
/// `malformed gRPC message framing` and counted so, where tonic answers
/// INTERNAL with its own text: INTERNAL is reserved for our own bugs. The
/// gRPC compression doc asks for INTERNAL on a compressed flag without
/// `grpc-encoding`; we depart from it on purpose, for that contract.
#[derive(Clone)]
pub struct Counted<S>(pub S);

/// The `method` label of a request to a method the contract does not declare.
pub const UNKNOWN_METHOD: &str = "unknown";

/// The message of the INVALID_ARGUMENT answer to broken gRPC framing.
pub const MALFORMED_FRAMING: &str = "malformed gRPC message framing";

impl<S: tonic::server::NamedService> tonic::server::NamedService for Counted<S> {
    const NAME: &'static str = S::NAME;
}

type HttpRequest = tonic::codegen::http::Request<tonic::body::Body>;
type HttpResponse = tonic::codegen::http::Response<tonic::body::Body>;

impl<S> tonic::codegen::Service<HttpRequest> for Counted<S>
where
    S: tonic::server::NamedService
        + tonic::codegen::Service<
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
        let method = declared_method(S::NAME, request.uri().path()).unwrap_or(UNKNOWN_METHOD);
        let answer = self.0.call(request);
        Box::pin(async move {
            let response = refuse_malformed_framing(answer.await?);
            let code = grpc_status(&response).unwrap_or(Code::Ok);
            metrics::counter!(names::REQUESTS, "method" => method, "code" => format!("{code:?}"))
                .increment(1);
            Ok(response)
        })
    }
}

/// The code of a trailers-only response's `grpc-status` header; `None`
/// without one (a success, whose status comes in the trailers).
fn grpc_status(response: &HttpResponse) -> Option<Code> {
    response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok()?.parse::<i32>().ok())
        .map(Code::from_i32)
}

/// `response`, or INVALID_ARGUMENT [`MALFORMED_FRAMING`] in its place when
/// it is tonic's INTERNAL answer to a request whose framing is broken.
/// Our own INTERNAL (`internal error`) is never one of tonic's texts, so it
/// passes unchanged.
fn refuse_malformed_framing(response: HttpResponse) -> HttpResponse {
    if grpc_status(&response) != Some(Code::Internal) {
        return response;
    }
    let Some(message) = response
        .headers()
        .get("grpc-message")
        .and_then(|v| percent_decoded(v.as_bytes()))
    else {
        return response;
    };
    if !is_tonic_framing_error(&message) {
        return response;
    }
    tracing::info!(tonic = %message, "malformed gRPC framing refused");
    Status::invalid_argument(MALFORMED_FRAMING).into_http()
}

/// Whether `message` is one of the texts tonic (0.14) answers INTERNAL with
/// when a request's gRPC framing is broken, before any handler runs.
fn is_tonic_framing_error(message: &str) -> bool {
    // src/codec/decode.rs, `StreamingInner::decode_chunk`: the frame's
    // compressed flag is 1 but no `grpc-encoding` was sent, or it is
    // neither 0 nor 1.
    const COMPRESSED_WITHOUT_ENCODING: &str =
        "protocol error: received message with compressed-flag but no grpc-encoding was specified";
    const INVALID_FLAG: (&str, &str) = (
        "protocol error: received message with invalid compression flag: ",
        ", while sending request",
    );
    // src/codec/decode.rs, `StreamingInner::poll_frame`: the body ended
    // inside a frame (a length prefix longer than what follows, or fewer
    // than its 5 bytes).
    const TRUNCATED: &str = "Unexpected EOF decoding stream.";
    // src/server/grpc.rs, `Grpc::map_request_unary`: the body ended before
    // any message (a bare HEADERS frame).
    const NO_MESSAGE: &str = "Missing request message.";
    message == COMPRESSED_WITHOUT_ENCODING
        || message == TRUNCATED
        || message == NO_MESSAGE
        || (message.starts_with(INVALID_FLAG.0) && message.ends_with(INVALID_FLAG.1))
}

/// A `grpc-message` header value with its percent-encoding (gRPC's
/// PROTOCOL-HTTP2 spec) undone; `None` when it is not well-formed or not
/// UTF-8.
fn percent_decoded(value: &[u8]) -> Option<String> {
    let mut decoded = Vec::with_capacity(value.len());
    let mut bytes = value.iter();
    while let Some(&byte) = bytes.next() {
        if byte == b'%' {
            let mut hex = || bytes.next().and_then(|&b| char::from(b).to_digit(16));
            let (high, low) = (hex()?, hex()?);
            decoded.push(u8::try_from(high * 16 + low).ok()?);
        } else {
            decoded.push(byte);
        }
    }
    String::from_utf8(decoded).ok()
}

/// The contract's methods, by the full name of their service
/// (`realchat.auth.v1.AuthApi` → `Login`, …), decoded once from
/// [`proto::FILE_DESCRIPTOR_SET`]. Empty (every method `unknown`, logged)
/// if that could not be decoded, which the unit tests rule out.
static DECLARED_METHODS: std::sync::LazyLock<std::collections::HashMap<String, Vec<String>>> =
    std::sync::LazyLock::new(|| {
        declared_methods(proto::FILE_DESCRIPTOR_SET).unwrap_or_else(|e| {
            tracing::error!(error = %e, "the contract's descriptor set does not decode");
            std::collections::HashMap::new()
        })
    });

/// The method `path` (`/realchat.auth.v1.AuthApi/Login`) calls, when the
/// contract declares it for `service`.
fn declared_method(service: &str, path: &str) -> Option<&'static str> {
    let method = path
        .strip_prefix('/')?
        .strip_prefix(service)?
        .strip_prefix('/')?;
    DECLARED_METHODS
        .get(service)?
        .iter()
        .map(String::as_str)
        .find(|declared| *declared == method)
}

/// Every service in an encoded `FileDescriptorSet`, by full name, with its
/// methods' names.
///
/// # Errors
/// [`prost::DecodeError`] when `encoded` is not a `FileDescriptorSet`.
fn declared_methods(
    encoded: &[u8],
) -> Result<std::collections::HashMap<String, Vec<String>>, prost::DecodeError> {
    let set = <descriptor::FileDescriptorSet as prost::Message>::decode(encoded)?;
    Ok(set
        .file
        .into_iter()
        .flat_map(|file| {
            let package = file.package.unwrap_or_default();
            file.service.into_iter().map(move |service| {
                let name = service.name.unwrap_or_default();
                let full = if package.is_empty() {
                    name
                } else {
                    format!("{package}.{name}")
                };
                let methods = service.method.into_iter().filter_map(|m| m.name).collect();
                (full, methods)
            })
        })
        .collect())
}

/// The few fields of `google/protobuf/descriptor.proto` that name services
/// and methods; decoding skips the rest. Declared here because
/// `prost-types` is not a dependency.
mod descriptor {
    /// `google.protobuf.FileDescriptorSet`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct FileDescriptorSet {
        /// `file = 1`.
        #[prost(message, repeated, tag = "1")]
        pub file: Vec<FileDescriptorProto>,
    }

    /// `google.protobuf.FileDescriptorProto`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct FileDescriptorProto {
        /// `package = 2`.
        #[prost(string, optional, tag = "2")]
        pub package: Option<String>,
        /// `service = 6`.
        #[prost(message, repeated, tag = "6")]
        pub service: Vec<ServiceDescriptorProto>,
    }

    /// `google.protobuf.ServiceDescriptorProto`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ServiceDescriptorProto {
        /// `name = 1`.
        #[prost(string, optional, tag = "1")]
        pub name: Option<String>,
        /// `method = 2`.
        #[prost(message, repeated, tag = "2")]
        pub method: Vec<MethodDescriptorProto>,
    }

    /// `google.protobuf.MethodDescriptorProto`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct MethodDescriptorProto {
        /// `name = 1`.
        #[prost(string, optional, tag = "1")]
        pub name: Option<String>,
    }
}

#[cfg(test)]
mod counted_tests {
    use super::*;
    use crate::proto::auth_api_server::AuthApiServer;

    type Server = AuthApiServer<GrpcApi>;

    #[test]
    fn the_methods_come_from_the_contract_and_anything_else_is_unknown() {
        let service = <Server as tonic::server::NamedService>::NAME;
        assert_eq!(service, "realchat.auth.v1.AuthApi");
        assert_eq!(
            DECLARED_METHODS.get(service).map(Vec::as_slice),
            Some(
                ["Register", "Login", "Refresh", "Logout"]
                    .map(String::from)
                    .as_slice()
            )
        );
        assert_eq!(
            declared_method(service, "/realchat.auth.v1.AuthApi/Login"),
            Some("Login")
        );
        for path in [
            "/realchat.auth.v1.AuthApi/Made-up-7",
            "/realchat.auth.v1.AuthApi/login",
            "/realchat.auth.v1.AuthApi/Login/extra",
            "/realchat.auth.v1.AuthApi/",
            "/realchat.auth.v1.AuthApiX/Login",
            "/other.Service/Login",
            "/Login",
            "",
        ] {
            assert_eq!(declared_method(service, path), None, "{path:?}");
        }
    }

    #[test]
    fn tonic_framing_errors_become_invalid_argument_and_ours_stay_internal() {
        for tonic in [
            "protocol error: received message with compressed-flag but no grpc-encoding was specified",
            "protocol error: received message with invalid compression flag: 2 (valid flags are 0 and 1), while sending request",
            "Unexpected EOF decoding stream.",
            "Missing request message.",
        ] {
            let response = refuse_malformed_framing(Status::internal(tonic).into_http());
            assert_eq!(
                grpc_status(&response),
                Some(Code::InvalidArgument),
                "{tonic}"
            );
            let message = response.headers().get("grpc-message").unwrap().as_bytes();
            assert_eq!(
                percent_decoded(message).as_deref(),
                Some(MALFORMED_FRAMING),
                "{tonic}"
            );
        }
        for kept in [
            Status::internal("internal error"),
            Status::internal("Unexpected EOF decoding stream. (and more)"),
            Status::invalid_argument("Missing request message."),
            Status::unavailable("service temporarily unavailable, retry later"),
        ] {
            let (code, message) = (kept.code(), kept.message().to_owned());
            let response = refuse_malformed_framing(kept.into_http());
            assert_eq!(grpc_status(&response), Some(code), "{message}");
            let header = response.headers().get("grpc-message").unwrap().as_bytes();
            assert_eq!(percent_decoded(header), Some(message));
        }
    }

    #[test]
    fn grpc_message_percent_encoding_is_undone() {
        assert_eq!(percent_decoded(b"a%20b%25c").as_deref(), Some("a b%c"));
        assert_eq!(percent_decoded(b"%C3%A9").as_deref(), Some("\u{e9}"));
        assert_eq!(percent_decoded(b"bad%2"), None);
        assert_eq!(percent_decoded(b"bad%zz"), None);
        assert_eq!(percent_decoded(b"%FF"), None);
    }
}
