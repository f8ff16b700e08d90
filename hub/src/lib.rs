//! skerry-hub: the control plane Skerry devices register with. It speaks the Amazon ECS
//! (and SSM activation) JSON API, so the stock aws CLI drives it with `--endpoint-url`.
//!
//! # Layout
//! Where a request goes: `server` verifies its signature (`skerry_aws_json::sigv4`) and
//! hands it to `api`, whose `api::OPERATIONS` table names the handler of every operation.
//! Start there.
//!
//! The public surface is what the `skerry-hub` binary, the load generator and the hub's
//! integration tests use: `server::run`, `config`, `ca`, `broker`, `revocation`, the link's
//! TLS set-up (`link`), the listeners' limits (`listener`), and, for tests that play devices
//! in-process, `state`, `arn`, `device` and
//! `store`. Every other module is `pub(crate)`.
//!
//! - `api`: the AWS JSON 1.1 protocol, the dispatch table and the operations:
//!   `api/ecs/` (`clusters`, `task_definitions`, `tasks`, `services`, `instances`, and in
//!   `api/ecs/mod.rs` what they share: error constructors, cluster and task definition
//!   references, tags, pagination), `api/ssm.rs` (activations), `api/skerry.rs`
//!   (`ListEvents`).
//! - `state`: `state::Hub`, what every part works over: the store, the ARNs, the changes.
//! - `arn`: every ARN the hub gives out or reads back.
//! - `changes`: the one write path to the store, and the wake-ups it sends the publisher and
//!   the service loop.
//! - `clock`: the hub's clock, read in one place.
//! - `scheduler`: task placement (`scheduler/placement.rs`, pure) and the service loop
//!   (`scheduler/service_loop.rs`).
//! - `device`: the device side, without the transport: desired-state documents out
//!   (`device/documents.rs`) and device messages in (`device/ingest.rs`).
//! - `quota`: each device's message quota (a token bucket), what is over it dropped and
//!   counted.
//! - `link`: the hub's MQTT client, which carries the device side over the broker.
//! - `server`: the API listener, request handling and graceful shutdown.
//! - `register`: the HTTPS listener devices register with (`POST /v1/register`).
//! - `metrics`: `/metrics` for Prometheus on its own listener: the text format
//!   (`metrics/text.rs`), the hub's own families (`metrics/hub.rs`) and the fleet's
//!   figures (`metrics/fleet.rs`).
//! - `health`: the hub's own counters (API requests and latency, device messages, the
//!   broker link), updated where those happen.
//! - `listener`: what both listeners share: the bounded accept loop, the per-address
//!   connection limit and the body-read deadline.
//! - `config`: the TOML configuration, checked into [`config::Config`] at startup.
//! - `ca`: the hub's certificate authority: device, server and hub client certificates.
//! - `broker`: the Mosquitto configuration and ACL `skerry-hub broker-config` writes.
//! - `revocation`: cutting deregistered devices off at the broker (revocation list, reload,
//!   session takeover).
//! - `taskdef`: the check a task definition passes before it is stored.
//! - `store`: the hub's state in SQLite; all SQL lives here (`store/instances.rs`: devices
//!   and their registration, `store/tasks.rs`: tasks and the write transaction,
//!   `store/services.rs`, `store/events.rs`: device and service events, `store/links.rs`:
//!   each device's link, `store/fleet.rs`: the snapshot `/metrics` reads).

pub(crate) mod api;
pub mod arn;
pub mod broker;
pub mod ca;
pub(crate) mod changes;
pub(crate) mod clock;
pub mod config;
pub mod device;
pub mod health;
pub mod link;
pub mod listener;
pub mod metrics;
pub mod quota;
pub(crate) mod register;
pub mod revocation;
pub(crate) mod scheduler;
pub mod server;
pub mod state;
pub mod store;
pub(crate) mod taskdef;
