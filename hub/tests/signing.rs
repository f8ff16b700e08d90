//! Requests signed in Rust and sent over a raw loopback socket, for what the aws CLI cannot
//! be made to do: sign with a skewed clock, or leave X-Amz-Target out of the signature.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{SystemTime, UNIX_EPOCH};

use common::{Hub, KEY_ID, REGION, SECRET};
use hyper::header::{HeaderMap, HeaderValue};
use serde_json::Value;
use skerry_aws_json::sigv4;

const TARGET: &str = "AmazonEC2ContainerServiceV20141113.ListClusters";

/// Sends ListClusters signed at `offset_secs` from now over `signed`; returns the status
/// code and the JSON body.
fn list_clusters(hub: &Hub, offset_secs: i64, signed: &[&str]) -> (u16, Value) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64;
    let amz_date = sigv4::format_amz_date(now + offset_secs);
    let host = format!("127.0.0.1:{}", hub.port);
    let body = b"{}";
    let mut headers = HeaderMap::new();
    headers.insert("host", HeaderValue::from_str(&host).expect("ascii"));
    headers.insert(
        "x-amz-date",
        HeaderValue::from_str(&amz_date).expect("ascii"),
    );
    headers.insert("x-amz-target", HeaderValue::from_static(TARGET));
    headers.insert(
        "content-type",
        HeaderValue::from_static("application/x-amz-json-1.1"),
    );
    let req = sigv4::Signed {
        method: "POST",
        path: "/",
        query: "",
        headers: &headers,
        body,
    };
    let auth = sigv4::authorization(&req, signed, (KEY_ID, SECRET), &amz_date, REGION, "ecs")
        .expect("sign");
    let mut stream = TcpStream::connect(&host).expect("connect to the hub");
    let mut raw = format!("POST / HTTP/1.1\r\nConnection: close\r\nAuthorization: {auth}\r\n");
    for (name, value) in &headers {
        raw.push_str(&format!("{name}: {}\r\n", value.to_str().expect("ascii")));
    }
    raw.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    stream.write_all(raw.as_bytes()).expect("send headers");
    stream.write_all(body).expect("send body");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read response");
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {response:?}"));
    let (_, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no body in {response:?}"));
    (status, serde_json::from_str(body).expect("JSON body"))
}

const ALL: &[&str] = &["content-type", "host", "x-amz-date", "x-amz-target"];

#[test]
fn clock_skew_within_15_minutes_is_accepted_beyond_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let hub = Hub::start(tmp.path());
    for offset in [-600, 600] {
        let (status, body) = list_clusters(&hub, offset, ALL);
        assert_eq!(status, 200, "offset {offset}: {body}");
        assert!(body["clusterArns"].is_array(), "{body}");
    }
    for offset in [-1200, 1200] {
        let (status, body) = list_clusters(&hub, offset, ALL);
        assert_eq!(status, 403, "offset {offset}: {body}");
        assert_eq!(body["__type"], "InvalidSignatureException");
        assert!(
            body["message"]
                .as_str()
                .is_some_and(|m| m.contains("signature expired")),
            "{body}"
        );
    }
    hub.stop();
}

#[test]
fn unsigned_target_header_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let hub = Hub::start(tmp.path());
    let (status, body) = list_clusters(&hub, 0, &["content-type", "host", "x-amz-date"]);
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["__type"], "InvalidSignatureException");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("x-amz-target")),
        "{body}"
    );
    hub.stop();
}
