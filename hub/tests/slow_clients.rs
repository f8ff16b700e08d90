//! Clients that hold connections before authenticating, against the real `skerry-hub`: a
//! body that never comes is answered and closed within the body deadline, and one address
//! cannot take every connection slot while another still gets answers. Loopback only: the
//! second address is 127.0.0.2, which Linux routes to the same loopback interface.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use skerry_hub::listener::{API_PER_ADDRESS, BODY_READ_TIMEOUT, REGISTRATION_PER_ADDRESS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const HEADERS_WITHOUT_BODY: &[u8] =
    b"POST / HTTP/1.1\r\nHost: hub\r\nContent-Type: application/x-amz-json-1.1\r\nContent-Length: 100\r\n\r\n";

async fn connect_from(source: &str, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(format!("{source}:0").parse().expect("address"))
        .expect("bind the source address");
    socket.connect(to).await.expect("connect")
}

/// Everything the server sends until it closes, or what came by `limit`, and whether it
/// closed.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (String, bool) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return (String::from_utf8_lossy(&got).into_owned(), false),
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&got).into_owned(), true),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_never_comes_is_answered_and_closed_within_the_deadline() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let hub = common::Hub::start(tmp.path());
    let api: SocketAddr = ([127, 0, 0, 1], hub.port).into();
    let mut idle = connect_from("127.0.0.1", api).await;
    idle.write_all(HEADERS_WITHOUT_BODY)
        .await
        .expect("send headers");
    let started = Instant::now();
    let (answer, closed) = read_until_closed(&mut idle, BODY_READ_TIMEOUT * 2).await;
    let took = started.elapsed();
    assert!(closed, "still open after {took:?}; got {answer:?}");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(answer.contains("did not arrive within"), "{answer:?}");
    assert!(
        took >= BODY_READ_TIMEOUT - Duration::from_secs(1)
            && took < BODY_READ_TIMEOUT + Duration::from_secs(5),
        "closed after {took:?}"
    );
    hub.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_hold_every_slot() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let hub = common::Hub::start(tmp.path());
    let api: SocketAddr = ([127, 0, 0, 1], hub.port).into();
    // Its whole share, idle, as a slow client would.
    let mut held = Vec::new();
    for _ in 0..API_PER_ADDRESS {
        held.push(connect_from("127.0.0.1", api).await);
    }
    // One more from it is closed at once.
    let mut over = connect_from("127.0.0.1", api).await;
    let (_, closed) = read_until_closed(&mut over, Duration::from_secs(5)).await;
    assert!(closed, "a connection over the address's share was kept");
    // Another address is answered (the request is unsigned: the answer is a refusal).
    let mut other = connect_from("127.0.0.2", api).await;
    other
        .write_all(
            b"POST / HTTP/1.1\r\nHost: hub\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
        )
        .await
        .expect("send");
    let (answer, closed) = read_until_closed(&mut other, Duration::from_secs(10)).await;
    assert!(closed, "{answer:?}");
    assert!(answer.starts_with("HTTP/1.1 4"), "{answer:?}");
    // The held connections are still open: they were not closed to make room.
    let (_, closed) = read_until_closed(&mut held[0], Duration::from_millis(200)).await;
    assert!(!closed);

    // The registration listener: its share from one address too, then closed at once,
    // while another address's connection is kept for its TLS handshake.
    let registration: SocketAddr = ([127, 0, 0, 1], hub.registration_port).into();
    let mut held_registration = Vec::new();
    let mut refused = None;
    // Quickly: each held connection is closed by the TLS handshake timeout (10 s).
    for _ in 0..2 * REGISTRATION_PER_ADDRESS {
        let mut c = connect_from("127.0.0.1", registration).await;
        let (_, closed) = read_until_closed(&mut c, Duration::from_millis(100)).await;
        if closed {
            refused = Some(held_registration.len());
            break;
        }
        held_registration.push(c);
    }
    assert_eq!(
        refused,
        Some(REGISTRATION_PER_ADDRESS),
        "connections kept before one was closed"
    );
    let mut other = connect_from("127.0.0.2", registration).await;
    let (_, closed) = read_until_closed(&mut other, Duration::from_secs(1)).await;
    assert!(!closed, "another address was closed too");
    drop(held);
    drop(held_registration);
    hub.stop();
}
