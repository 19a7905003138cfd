//! Plain HTTP/1.1 GETs against the health, readiness and metrics ports, and
//! reading a Prometheus exposition; no HTTP client library needed.

use std::collections::HashMap;
use std::fmt::Display;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpStream, ToSocketAddrs};

/// The whole response to `GET path` on `addr`, connection closed by the
/// server.
async fn get(addr: impl ToSocketAddrs + Display, path: &str) -> std::io::Result<String> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    Ok(String::from_utf8_lossy(&response).into_owned())
}

/// The status code in a response's first line.
fn status_of(response: &str) -> Option<u16> {
    response.split_whitespace().nth(1)?.parse().ok()
}

/// `GET path` on `addr`; returns the status code and body.
pub async fn http_get(addr: impl ToSocketAddrs + Display, path: &str) -> (u16, String) {
    let (status, _, body) = http_get_with_headers(addr, path).await;
    (status, body)
}

/// `GET path` on `addr`; returns the status code, the headers (names
/// lower-cased) and the body.
pub async fn http_get_with_headers(
    addr: impl ToSocketAddrs + Display,
    path: &str,
) -> (u16, HashMap<String, String>, String) {
    let response = get(addr, path).await.unwrap();
    let status = status_of(&response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let headers = head
        .lines()
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    (status, headers, body.to_owned())
}

/// The status code of `GET path` on `addr`, or `None` when the port does
/// not answer (yet): for polling readiness.
pub async fn http_status(addr: impl ToSocketAddrs + Display, path: &str) -> Option<u16> {
    status_of(&get(addr, path).await.ok()?)
}

/// The value of an unlabelled metric in a Prometheus text exposition.
pub fn metric(exposition: &str, name: &str) -> Option<f64> {
    exposition.lines().find_map(|line| {
        let (metric, value) = line.split_once(' ')?;
        (metric == name).then(|| value.trim().parse().ok())?
    })
}
