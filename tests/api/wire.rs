//! Requests that are not what a generated client sends: raw protobuf frames,
//! broken gRPC framing and oversized messages.

use bytes::{Buf, BufMut};
use realchat_auth::proto::RegisterRequest;
use tonic::Code;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

use crate::{expect_code, violated_fields};
use realchat_testkit::app::TestApp;

/// Sends its bytes as the message body, unchanged; ignores the response body.
#[derive(Default)]
struct RawCodec;

struct RawEncoder;
struct IgnoreDecoder;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = ();
    type Encoder = RawEncoder;
    type Decoder = IgnoreDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> IgnoreDecoder {
        IgnoreDecoder
    }
}

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for IgnoreDecoder {
    type Item = ();
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<()>, tonic::Status> {
        src.advance(src.remaining());
        Ok(Some(()))
    }
}

/// Sends `body` as the raw message of `method` (`Register`, `Login`, …).
pub async fn send_raw(app: &TestApp, method: &str, body: Vec<u8>) -> Result<(), tonic::Status> {
    send_raw_on(app.channel().await, method, body).await
}

/// The HTTP/2 path of `method`: an AuthApi method (`Login`), or
/// `Service/Method` of another service of the package
/// (`AccountApi/GetAccount`).
fn method_path(method: &str) -> String {
    if method.contains('/') {
        format!("/realchat.auth.v1.{method}")
    } else {
        format!("/realchat.auth.v1.AuthApi/{method}")
    }
}

/// [`send_raw`] on a channel to any server.
pub async fn send_raw_on(
    channel: tonic::transport::Channel,
    method: &str,
    body: Vec<u8>,
) -> Result<(), tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path: http::uri::PathAndQuery = method_path(method).parse().unwrap();
    grpc.unary(tonic::Request::new(body), path, RawCodec)
        .await
        .map(|_| ())
}

/// One chunk of bytes as an HTTP body.
struct OneChunk(Option<bytes::Bytes>);

impl http_body::Body for OneChunk {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        std::task::Poll::Ready(self.0.take().map(|data| Ok(http_body::Frame::data(data))))
    }
}

/// Sends `body` as the whole HTTP/2 request body of `method`, gRPC's 5-byte
/// message header included, so the framing can be anything; an empty body
/// is a bare HEADERS frame. Returns the answer's gRPC status.
pub async fn send_framed(app: &TestApp, method: &str, body: Vec<u8>) -> Result<(), tonic::Status> {
    send_framed_on(app.channel().await, method, body).await
}

/// [`send_framed`] on a channel to any server.
pub async fn send_framed_on(
    channel: tonic::transport::Channel,
    method: &str,
    body: Vec<u8>,
) -> Result<(), tonic::Status> {
    send_framed_to(channel, &method_path(method), body).await
}

/// [`send_framed`] to the method at `path` of any service.
pub async fn send_framed_to(
    mut channel: tonic::transport::Channel,
    path: &str,
    body: Vec<u8>,
) -> Result<(), tonic::Status> {
    use http_body::Body as _;
    use tonic::codegen::Service as _;
    let body = if body.is_empty() {
        tonic::body::Body::empty()
    } else {
        tonic::body::Body::new(OneChunk(Some(body.into())))
    };
    let request = http::Request::post(path)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(body)
        .unwrap();
    std::future::poll_fn(|cx| channel.poll_ready(cx))
        .await
        .unwrap();
    let (head, body) = channel.call(request).await.unwrap().into_parts();
    // An error comes trailers-only (the status in the headers); an answer
    // after its message, in the trailers.
    let status = match tonic::Status::from_header_map(&head.headers) {
        Some(status) => status,
        None => {
            let mut body = std::pin::pin!(body);
            loop {
                let frame = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx))
                    .await
                    .expect("trailers after the message")
                    .unwrap();
                if let Ok(trailers) = frame.into_trailers() {
                    break tonic::Status::from_header_map(&trailers).expect("grpc-status");
                }
            }
        }
    };
    if status.code() == Code::Ok {
        Ok(())
    } else {
        Err(status)
    }
}

/// `message` in one gRPC frame: flag 0 (not compressed), its length, itself.
pub fn frame(message: &[u8]) -> Vec<u8> {
    let mut framed = vec![0];
    framed.extend(u32::try_from(message.len()).unwrap().to_be_bytes());
    framed.extend(message);
    framed
}

/// Request bodies whose gRPC framing is broken, by name; each frame holds
/// (or starts) an empty message, which every method would decode.
pub fn broken_framing() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("compressed flag without grpc-encoding", vec![1, 0, 0, 0, 0]),
        ("compressed flag 2", vec![2, 0, 0, 0, 0]),
        ("compressed flag 255", vec![255, 0, 0, 0, 0]),
        (
            "length prefix past the body",
            vec![0, 0, 0, 0, 10, 0x0a, 0x00],
        ),
        ("message header cut short", vec![0, 0, 0]),
        ("no message (bare HEADERS)", vec![]),
    ]
}

#[tokio::test]
async fn broken_grpc_framing_is_invalid_argument_in_our_words() {
    let app = TestApp::spawn().await;
    for method in ["Register", "Login", "Refresh", "Logout"] {
        for (name, body) in broken_framing() {
            let status = expect_code(send_framed(&app, method, body).await, Code::InvalidArgument);
            // Ours, not tonic's "protocol error: …" (INTERNAL is for our bugs).
            assert_eq!(
                status.message(),
                "malformed gRPC message framing",
                "{method} {name}"
            );
        }
    }
    // The control: well framed, the same bytes reach the handler (which
    // refuses the empty message by its fields), and a real message is
    // answered in the trailers.
    let status = expect_code(
        send_framed(&app, "Register", frame(&[])).await,
        Code::InvalidArgument,
    );
    assert_eq!(status.message(), "request has invalid fields");
    let register = prost::Message::encode_to_vec(&RegisterRequest {
        email: "framed@example.com".into(),
        password: "a good password".into(),
    });
    send_framed(&app, "Register", frame(&register))
        .await
        .unwrap();
    app.stop().await;
}

#[tokio::test]
async fn health_and_reflection_refuse_unreadable_requests_with_invalid_argument() {
    let app = TestApp::spawn().await;
    let mut bodies = broken_framing();
    // A varint that never ends: not a HealthCheckRequest (tonic's own codec
    // calls that INTERNAL).
    bodies.push(("invalid varint", frame(&[0x0a, 0xff])));
    for (name, body) in bodies {
        let status = expect_code(
            send_framed_to(app.channel().await, "/grpc.health.v1.Health/Check", body).await,
            Code::InvalidArgument,
        );
        assert!(
            status.message().starts_with("malformed "),
            "{name}: {status:?}"
        );
    }
    // The control: a well-framed empty request is answered.
    send_framed_to(
        app.channel().await,
        "/grpc.health.v1.Health/Check",
        frame(&[]),
    )
    .await
    .unwrap();
    app.stop().await;
}

#[tokio::test]
async fn malformed_protobuf_is_invalid_argument_not_internal() {
    let app = TestApp::spawn().await;
    let cases: [(&str, Vec<u8>); 4] = [
        // field 1 (email), length-delimited, 2 bytes of invalid UTF-8
        ("invalid UTF-8", vec![0x0a, 0x02, 0xff, 0xfe]),
        // field 1 claims 10 bytes, 2 follow
        ("truncated", vec![0x0a, 0x0a, b'a', b'b']),
        // field 1 sent as a varint
        ("wrong wire type", vec![0x08, 0x01]),
        // a tag with field number 0
        ("field zero", vec![0x02, 0x00]),
    ];
    for (name, body) in cases {
        let status = expect_code(
            send_raw(&app, "Register", body).await,
            Code::InvalidArgument,
        );
        assert!(
            status.message().starts_with("malformed message"),
            "{name}: {status:?}"
        );
    }
    // The server is fine afterwards.
    app.register("after@example.com", "a good password").await;
    app.stop().await;
}

#[tokio::test]
async fn oversized_fields_and_messages_are_refused_cheaply() {
    let app = TestApp::spawn().await;
    let mut client = app.client.clone();
    // Under the message limit: the field rules answer, on the raw length.
    // U+FDFA grows elevenfold under NFKC; it must not be normalised at all.
    for (email, password, field) in [
        (
            "\u{fdfa}".repeat(20_000),
            "a good password".to_owned(),
            "email",
        ),
        (
            "big@example.com".to_owned(),
            "\u{fdfa}".repeat(20_000),
            "password",
        ),
    ] {
        let status = expect_code(
            client.register(RegisterRequest { email, password }).await,
            Code::InvalidArgument,
        );
        assert_eq!(violated_fields(&status), [field]);
    }
    // Over the 64 KiB message limit: refused before decoding.
    expect_code(
        client
            .register(RegisterRequest {
                email: "a".repeat(1 << 20),
                password: "a good password".into(),
            })
            .await,
        Code::OutOfRange,
    );
    app.register("after@example.com", "a good password").await;
    app.stop().await;
}
