//! Requests that are not what a generated client sends: raw protobuf frames
//! and oversized messages.

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

/// [`send_raw`] on a channel to any server.
pub async fn send_raw_on(
    channel: tonic::transport::Channel,
    method: &str,
    body: Vec<u8>,
) -> Result<(), tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path: http::uri::PathAndQuery = format!("/realchat.auth.v1.AuthApi/{method}")
        .parse()
        .unwrap();
    grpc.unary(tonic::Request::new(body), path, RawCodec)
        .await
        .map(|_| ())
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
