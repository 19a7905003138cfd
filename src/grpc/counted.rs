//! [`Counted`]: the wrapper around the API's gRPC service that counts every
//! answer in `auth_requests_total` and puts INVALID_ARGUMENT in place of
//! tonic's INTERNAL answer to broken gRPC framing.

use std::collections::HashMap;
use std::sync::LazyLock;

use tonic::{Code, Status};

use crate::observe::names;
use crate::proto;

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
    let Some(status) = Status::from_header_map(response.headers()) else {
        return response;
    };
    if !is_tonic_framing_error(status.message()) {
        return response;
    }
    tracing::info!(tonic = status.message(), "malformed gRPC framing refused");
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

/// The contract's methods, by the full name of their service
/// (`realchat.auth.v1.AuthApi` → `Login`, …), decoded once from
/// [`proto::FILE_DESCRIPTOR_SET`]. Empty (every method `unknown`, logged)
/// if that could not be decoded, which the unit tests rule out.
static DECLARED_METHODS: LazyLock<HashMap<String, Vec<String>>> = LazyLock::new(|| {
    declared_methods(proto::FILE_DESCRIPTOR_SET).unwrap_or_else(|e| {
        tracing::error!(error = %e, "the contract's descriptor set does not decode");
        HashMap::new()
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
fn declared_methods(encoded: &[u8]) -> Result<HashMap<String, Vec<String>>, prost::DecodeError> {
    let set = <prost_types::FileDescriptorSet as prost::Message>::decode(encoded)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grpc::GrpcApi;
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
    fn account_api_methods_are_labelled_by_their_own_service() {
        use crate::proto::account_api_server::AccountApiServer;
        let service = <AccountApiServer<GrpcApi> as tonic::server::NamedService>::NAME;
        assert_eq!(service, "realchat.auth.v1.AccountApi");
        assert_eq!(
            DECLARED_METHODS.get(service).map(Vec::as_slice),
            Some(
                [
                    "GetAccount",
                    "ListSessions",
                    "RevokeSession",
                    "ChangePassword",
                    "DeleteAccount"
                ]
                .map(String::from)
                .as_slice()
            )
        );
        assert_eq!(
            declared_method(service, "/realchat.auth.v1.AccountApi/ListSessions"),
            Some("ListSessions")
        );
        // A method of the other service is not one of this one's.
        assert_eq!(
            declared_method(service, "/realchat.auth.v1.AccountApi/Login"),
            None
        );
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
            let message = Status::from_header_map(response.headers()).unwrap();
            assert_eq!(message.message(), MALFORMED_FRAMING, "{tonic}");
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
            let status = Status::from_header_map(response.headers()).unwrap();
            assert_eq!(status.message(), message);
        }
    }
}
