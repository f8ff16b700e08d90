//! The device's identity: its key (made here, never sent anywhere), the client certificate
//! the hub's CA signed for it, the CA itself, and what registration answered (instance id,
//! ARNs, broker URL).
//!
//! - `store`: the identity kept in `DATA_DIR/identity/` (`key.pem` 0600, `cert.pem`,
//!   `ca.pem`, `identity.json`), written as a whole directory renamed into place, so a power
//!   cut leaves no identity, the old one or the new one, never a mix.
//! - `pin`: TLS trusted only through the CA fingerprint of the provisioning file
//!   ([`PinnedVerifier`]): no system roots, no trust on first use.
//! - `register`: registration, one HTTPS request to the hub over that pinned TLS.
//! - `plan`: what the device does at start ([`Plan`]) and carrying it out ([`establish`]).

mod pin;
mod plan;
mod register;
mod store;
#[cfg(test)]
mod tests;

pub use pin::{fingerprint, pem_certs, pinned_client_config, PinnedVerifier};
pub use plan::{establish, Plan};
pub use register::{register, HostFacts, RegisterError};
pub use store::{broker_addr, Identity, IdentityError, IdentityMeta};
