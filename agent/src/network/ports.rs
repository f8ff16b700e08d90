//! Host port choice: a port is free if the kernel lets us bind it on 0.0.0.0 and no other
//! attachment of this agent maps it (a DNAT rule holds no socket, so the kernel can't tell).

use std::collections::HashSet;
use std::io;
use std::net::{Ipv4Addr, TcpListener, UdpSocket};

use super::Protocol;

/// Tries picking an unused port this many times before giving up; each miss means the
/// kernel handed out a port another attachment maps.
const PICK_ATTEMPTS: usize = 64;

/// A bound socket: holding it keeps the kernel from handing the port out again while the
/// rest of a request is chosen.
pub(super) enum Hold {
    Tcp(TcpListener),
    Udp(UdpSocket),
}

impl Hold {
    fn port(&self) -> io::Result<u16> {
        match self {
            Hold::Tcp(l) => l.local_addr().map(|a| a.port()),
            Hold::Udp(s) => s.local_addr().map(|a| a.port()),
        }
    }
}

pub(super) enum Claim {
    Held(Hold),
    InUse,
}

/// Binds `port` on 0.0.0.0 for `protocol`.
pub(super) fn claim(port: u16, protocol: Protocol) -> io::Result<Claim> {
    let addr = (Ipv4Addr::UNSPECIFIED, port);
    let held = match protocol {
        Protocol::Tcp => TcpListener::bind(addr).map(Hold::Tcp),
        Protocol::Udp => UdpSocket::bind(addr).map(Hold::Udp),
    };
    match held {
        Ok(h) => Ok(Claim::Held(h)),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => Ok(Claim::InUse),
        Err(e) => Err(e),
    }
}

/// Lets the kernel pick a free port for `protocol` that is not in `taken`; adds it there.
pub(super) fn pick(
    protocol: Protocol,
    taken: &mut HashSet<(u16, Protocol)>,
) -> io::Result<Option<(u16, Hold)>> {
    for _ in 0..PICK_ATTEMPTS {
        let Claim::Held(hold) = claim(0, protocol)? else {
            continue;
        };
        let port = hold.port()?;
        if taken.insert((port, protocol)) {
            return Ok(Some((port, hold)));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listening_port_is_in_use() {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let port = l.local_addr().expect("addr").port();
        assert!(matches!(claim(port, Protocol::Tcp), Ok(Claim::InUse)));
    }

    #[test]
    fn pick_skips_taken_ports_and_records_its_choice() {
        let mut taken = HashSet::new();
        let (a, _ha) = pick(Protocol::Udp, &mut taken)
            .expect("pick")
            .expect("a free port");
        let (b, _hb) = pick(Protocol::Udp, &mut taken)
            .expect("pick")
            .expect("a free port");
        assert_ne!(a, b);
        assert!(taken.contains(&(a, Protocol::Udp)) && taken.contains(&(b, Protocol::Udp)));
    }
}
