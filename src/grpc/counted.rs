//! [`Counted`]: the wrapper around the API's gRPC service that counts every
//! answer in `auth_requests_total` and puts INVALID_ARGUMENT in place of
//! tonic's INTERNAL answer to broken gRPC framing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};

use tonic::{Code, Status};

use crate::observe::names;
use crate::proto;

/// The AuthApi service, counting every request it answers in
/// `auth_requests_total{method,code}`: the handlers' answers and also those
/// tonic gives before a handler runs (a body that is not valid protobuf:
/// INVALID_ARGUMENT; a message over the size limit: OUT_OF_RANGE). The code
/// is the response's `grpc-status` header, which unary errors carry
/// (trailers-only responses); a response without it is a success. A request
/// the client broke off (reset the stream or closed the connection before
/// its body ended) is not counted: its code would be the client's choice.
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

/// The message of the INVALID_ARGUMENT answer to a body that is not the
/// method's protobuf message, where tonic's codec (health, reflection)
/// says INTERNAL; our own codec (the API) says `malformed message: …`.
pub const MALFORMED_MESSAGE: &str = "malformed message";

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
        let broken_off = Arc::new(AtomicBool::new(false));
        let request = request.map(|body| {
            tonic::body::Body::new(Watched {
                body,
                broken_off: Arc::clone(&broken_off),
            })
        });
        let answer = self.0.call(request);
        Box::pin(async move {
            let response = answer.await?;
            // The client reset the stream or closed the connection before
            // its body ended: whatever code tonic made of that (the client
            // picks it with its reset's reason) is not an answer anyone
            // receives, so it is not counted.
            if broken_off.load(Ordering::Acquire) {
                tracing::debug!(method, "client broke off its request");
                return Ok(response);
            }
            let response = refuse_malformed_framing(response);
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

/// `response`, or INVALID_ARGUMENT in its place when it is tonic's INTERNAL
/// answer to a request it could not read: broken gRPC framing
/// ([`MALFORMED_FRAMING`]) or a body that is not the method's protobuf
/// message ([`MALFORMED_MESSAGE`], as our own codec answers). Our own
/// INTERNAL (`internal error`) is never one of tonic's texts, so it passes
/// unchanged. Used on every service: [`Counted`] for the API's (before it
/// counts), the gRPC port for health and reflection.
pub fn refuse_malformed_framing(response: HttpResponse) -> HttpResponse {
    if grpc_status(&response) != Some(Code::Internal) {
        return response;
    }
    let Some(status) = Status::from_header_map(response.headers()) else {
        return response;
    };
    let Some(answer) = unreadable_request(status.message()) else {
        return response;
    };
    tracing::info!(tonic = status.message(), "unreadable gRPC request refused");
    Status::invalid_argument(answer).into_http()
}

/// Our answer when `message` is one of the texts tonic (0.14) answers
/// INTERNAL with when it cannot read a request, before any handler runs.
fn unreadable_request(message: &str) -> Option<&'static str> {
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
    // tonic-prost's codec (health, reflection): not the message's protobuf.
    const UNDECODABLE: &str = "failed to decode Protobuf message";
    if message == COMPRESSED_WITHOUT_ENCODING
        || message == TRUNCATED
        || message == NO_MESSAGE
        || (message.starts_with(INVALID_FLAG.0) && message.ends_with(INVALID_FLAG.1))
    {
        Some(MALFORMED_FRAMING)
    } else if message.starts_with(UNDECODABLE) {
        Some(MALFORMED_MESSAGE)
    } else {
        None
    }
}

/// A request body that notes whether it ended in an error (the client
/// reset the stream or the connection went away) rather than at its end.
struct Watched {
    body: tonic::body::Body,
    broken_off: Arc<AtomicBool>,
}

impl http_body::Body for Watched {
    type Data = tonic::codegen::Bytes;
    type Error = Status;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Status>>> {
        let this = self.get_mut();
        let polled = std::pin::Pin::new(&mut this.body).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Err(_))) = &polled {
            this.broken_off.store(true, Ordering::Release);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
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
        for (tonic, ours) in [
            (
                "protocol error: received message with compressed-flag but no grpc-encoding was specified",
                MALFORMED_FRAMING,
            ),
            (
                "protocol error: received message with invalid compression flag: 2 (valid flags are 0 and 1), while sending request",
                MALFORMED_FRAMING,
            ),
            ("Unexpected EOF decoding stream.", MALFORMED_FRAMING),
            ("Missing request message.", MALFORMED_FRAMING),
            (
                "failed to decode Protobuf message: invalid varint",
                MALFORMED_MESSAGE,
            ),
        ] {
            let response = refuse_malformed_framing(Status::internal(tonic).into_http());
            assert_eq!(
                grpc_status(&response),
                Some(Code::InvalidArgument),
                "{tonic}"
            );
            let status = Status::from_header_map(response.headers()).unwrap();
            assert_eq!(status.message(), ours, "{tonic}");
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
