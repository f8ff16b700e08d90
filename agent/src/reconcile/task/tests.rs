//! The supervisor over a fake runtime: restart-policy timing, dependsOn ordering, the stop
//! order and adoption after an agent restart. The clock is tokio's paused one, so the
//! timings asserted are exact. The integration tests run the same code on containerd.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde_json::json;
use skerry_proto::desired::{DesiredStatus, DesiredTask};
use skerry_proto::status::{ContainerReport, TaskStatus};
use skerry_proto::taskdef::TaskDefinition;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Outcome, Running, Supervisor, STOP_ESSENTIAL_EXITED, STOP_FAILED_TO_START, STOP_USER};
use crate::config::Config;
use crate::image::{ImageConfig, ImageStore};
use crate::network::{Network, NetworkConfig};
use crate::reconcile::policy::View;
use crate::reconcile::{new_record, now_secs, Shared, TaskRecord};
use crate::runtime::containers::ProcessState;
use crate::runtime::fake::{Call, FakeRuntime, EXIT_SIGKILL, EXIT_SIGTERM};
use crate::runtime::Containerd;
use crate::store::Store;

const TASK_ID: &str = "0123456789abcdef0123456789abcdef";
const SIGTERM: u32 = nix::libc::SIGTERM as u32;
const SIGKILL: u32 = nix::libc::SIGKILL as u32;

fn arn() -> String {
    format!("arn:aws:ecs:local:000000000000:task/default/{TASK_ID}")
}

fn id(name: &str) -> String {
    format!("{TASK_ID}-{name}")
}

fn start(name: &str) -> Call {
    Call::Start(id(name))
}

fn kill(name: &str, signal: u32) -> Call {
    Call::Kill(id(name), signal)
}

fn starts_of(calls: &[Call], name: &str) -> usize {
    calls.iter().filter(|c| **c == start(name)).count()
}

/// One task's supervisor over a fake runtime, its containers created (what
/// `create_containers` leaves behind) but not started.
struct Harness {
    fake: Arc<FakeRuntime>,
    shared: Arc<Shared>,
    desired: watch::Sender<DesiredStatus>,
    shutdown: CancellationToken,
    _replacements: mpsc::Receiver<(String, tokio::sync::oneshot::Sender<Option<String>>)>,
    _dir: tempfile::TempDir,
}

impl Harness {
    fn new(containers: serde_json::Value) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let cfg = Config::parse(
            &format!("data_dir = {:?}\n", dir.path()),
            Path::new("agent.toml"),
        )
        .expect("a valid configuration");
        let store = Store::open(&cfg.state_db()).expect("a new store");
        let images = ImageStore::new(Containerd::unconnected("fake"), ImageConfig::default())
            .expect("an image store");
        let network = Network::new(NetworkConfig {
            cni_bin_dirs: Vec::new(),
            state_dir: cfg.network_state_dir(),
            netns_dir: dir.path().join("netns"),
            bridge: "skerry-test0".into(),
            subnet: "10.99.0.0/24".into(),
        });
        let fake = Arc::new(FakeRuntime::new());
        let (replace_tx, replacements) = mpsc::channel(1);
        let shared = Arc::new(Shared {
            cfg: Arc::new(cfg),
            runtime: fake.clone(),
            images,
            network,
            store,
            agent_bin: PathBuf::from("/usr/bin/skerry-agent"),
            records: Mutex::new(BTreeMap::new()),
            netns: Mutex::new(HashMap::new()),
            observer: OnceLock::new(),
            events: OnceLock::new(),
            replacements: replace_tx,
        });
        let definition: TaskDefinition = serde_json::from_value(json!({
            "family": "supervised",
            "containerDefinitions": containers,
        }))
        .expect("a valid task definition");
        for c in &definition.container_definitions {
            fake.put(&id(&c.name), ProcessState::Absent);
        }
        let task = DesiredTask {
            task_arn: arn(),
            task_definition: definition,
            desired_status: DesiredStatus::Running,
            group: None,
        };
        shared
            .insert(new_record(&task))
            .expect("the record is stored");
        Self {
            fake,
            shared,
            desired: watch::channel(DesiredStatus::Running).0,
            shutdown: CancellationToken::new(),
            _replacements: replacements,
            _dir: dir,
        }
    }

    fn record(&self) -> TaskRecord {
        self.shared.record(&arn()).expect("the task has a record")
    }

    fn container(&self, name: &str) -> ContainerReport {
        self.record()
            .report
            .containers
            .into_iter()
            .find(|c| c.name == name)
            .expect("the container is in the report")
    }

    fn supervisor(&self) -> Supervisor {
        Supervisor::new(
            self.shared.clone(),
            &self.record(),
            self.desired.subscribe(),
            self.shutdown.clone(),
        )
    }

    /// Runs the supervisor from created containers until it returns; hands it back with
    /// the outcome so a test can go on to stop the task.
    fn operate(&self) -> JoinHandle<(Supervisor, Outcome)> {
        let mut sup = self.supervisor();
        let run = Running {
            views: sup
                .def
                .container_definitions
                .iter()
                .map(|c| (c.name.clone(), View::default()))
                .collect(),
            ..Running::default()
        };
        tokio::spawn(async move {
            let outcome = sup.operate(run).await;
            (sup, outcome)
        })
    }
}

async fn outcome(h: JoinHandle<(Supervisor, Outcome)>) -> (Supervisor, Outcome) {
    h.await.expect("the supervisor does not panic")
}

#[tokio::test(start_paused = true)]
async fn restarts_after_a_pause_that_doubles_and_stops_a_container_that_fails_early() {
    let h = Harness::new(json!([{
        "name": "app",
        "image": "app:1",
        "restartPolicy": {"enabled": true, "restartAttemptPeriod": 60},
    }]));
    let sup = h.operate();
    h.fake
        .until("app's start", |c| starts_of(c, "app") == 1)
        .await;

    // Ran past restartAttemptPeriod: restarted after 0.5 s, then 1 s the next time.
    for (n, pause) in [(2, 500), (3, 1000)] {
        tokio::time::sleep(Duration::from_secs(61)).await;
        h.fake.exit(&id("app"), 1);
        let exited = Instant::now();
        h.fake
            .until("app's restart", |c| starts_of(c, "app") == n)
            .await;
        let restarted = *h.fake.times(&start("app")).last().expect("started");
        assert_eq!(
            restarted - exited,
            Duration::from_millis(pause),
            "restart {n}"
        );
    }
    assert_eq!(h.record().restarts.get("app"), Some(&2));
    assert_eq!(h.container("app").last_status, TaskStatus::Running);
    assert_eq!(h.record().report.last_status, TaskStatus::Running);

    // Failing within restartAttemptPeriod: not restarted, and the essential container
    // stops the task.
    tokio::time::sleep(Duration::from_secs(10)).await;
    h.fake.exit(&id("app"), 1);
    let (_, out) = outcome(sup).await;
    assert_eq!(
        out,
        Outcome::Stop {
            reason: "Essential container in task exited: app exited with code 1".into(),
            code: STOP_ESSENTIAL_EXITED,
        }
    );
    assert_eq!(starts_of(&h.fake.calls(), "app"), 3);
    assert_eq!(h.container("app").exit_code, Some(1));
}

#[tokio::test(start_paused = true)]
async fn ignored_exit_codes_and_a_disabled_policy_are_not_restarted() {
    let h = Harness::new(json!([
        {"name": "app", "image": "app:1"},
        {"name": "job", "image": "job:1", "essential": false,
         "restartPolicy": {"enabled": true, "ignoredExitCodes": [0], "restartAttemptPeriod": 60}},
    ]));
    let sup = h.operate();
    h.fake
        .until("both starts", |c| {
            starts_of(c, "job") == 1 && starts_of(c, "app") == 1
        })
        .await;
    tokio::time::sleep(Duration::from_secs(61)).await;
    h.fake.exit(&id("job"), 0);
    // Long enough for any restart (the longest pause is 30 s).
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(starts_of(&h.fake.calls(), "job"), 1, "{:?}", h.fake.calls());
    assert_eq!(h.container("job").exit_code, Some(0));
    assert_eq!(h.container("job").last_status, TaskStatus::Stopped);
    // A non-essential container's exit leaves the task running.
    assert!(!sup.is_finished());
    h.fake.exit(&id("app"), 2);
    let (_, out) = outcome(sup).await;
    assert!(
        matches!(&out, Outcome::Stop { code, .. } if *code == STOP_ESSENTIAL_EXITED),
        "{out:?}"
    );
    assert_eq!(starts_of(&h.fake.calls(), "app"), 1);
}

#[tokio::test(start_paused = true)]
async fn containers_start_when_their_dependencies_conditions_are_met() {
    let h = Harness::new(json!([
        {"name": "app", "image": "app:1",
         "dependsOn": [{"containerName": "migrate", "condition": "SUCCESS"}]},
        {"name": "migrate", "image": "migrate:1", "essential": false,
         "dependsOn": [{"containerName": "db", "condition": "START"}]},
        {"name": "db", "image": "db:1"},
    ]));
    let _sup = h.operate();
    h.fake
        .until("migrate's start", |c| starts_of(c, "migrate") == 1)
        .await;
    // app waits for migrate to succeed, however long that takes.
    tokio::time::sleep(Duration::from_secs(300)).await;
    assert_eq!(h.fake.calls(), [start("db"), start("migrate")]);
    assert_eq!(h.record().report.last_status, TaskStatus::Pending);

    h.fake.exit(&id("migrate"), 0);
    h.fake
        .until("app's start", |c| starts_of(c, "app") == 1)
        .await;
    assert_eq!(
        h.fake.calls(),
        [start("db"), start("migrate"), start("app")]
    );
    // Every essential container runs: the task does.
    tokio::task::yield_now().await;
    assert_eq!(h.record().report.last_status, TaskStatus::Running);
}

#[tokio::test(start_paused = true)]
async fn a_dependency_that_fails_its_condition_stops_the_task_without_starting_it() {
    let h = Harness::new(json!([
        {"name": "app", "image": "app:1",
         "dependsOn": [{"containerName": "migrate", "condition": "SUCCESS"}]},
        {"name": "migrate", "image": "migrate:1", "essential": false},
    ]));
    let sup = h.operate();
    h.fake
        .until("migrate's start", |c| starts_of(c, "migrate") == 1)
        .await;
    h.fake.exit(&id("migrate"), 3);
    let (_, out) = outcome(sup).await;
    assert_eq!(
        out,
        Outcome::Stop {
            reason: "Essential container app cannot start: dependency migrate exited with \
                     code 3, not 0 (condition SUCCESS)"
                .into(),
            code: STOP_FAILED_TO_START,
        }
    );
    assert_eq!(starts_of(&h.fake.calls(), "app"), 0);
}

#[tokio::test(start_paused = true)]
async fn stopping_signals_dependants_first_and_kills_after_the_stop_timeout() {
    let h = Harness::new(json!([
        {"name": "db", "image": "db:1"},
        {"name": "app", "image": "app:1", "stopTimeout": 5,
         "dependsOn": [{"containerName": "db", "condition": "START"}]},
        {"name": "proxy", "image": "proxy:1",
         "dependsOn": [{"containerName": "app", "condition": "START"}]},
    ]));
    let sup = h.operate();
    h.fake
        .until("all started", |c| starts_of(c, "proxy") == 1)
        .await;
    h.fake.ignore_sigterm(&id("app"));
    h.desired.send_replace(DesiredStatus::Stopped);
    let (sup, out) = outcome(sup).await;
    assert_eq!(
        out,
        Outcome::Stop {
            reason: "Task stopped: its desired status is STOPPED".into(),
            code: STOP_USER,
        }
    );

    sup.stop_all("Task stopped: its desired status is STOPPED", STOP_USER)
        .await;
    let stops: Vec<Call> = h
        .fake
        .calls()
        .into_iter()
        .filter(|c| matches!(c, Call::Kill(..)))
        .collect();
    assert_eq!(
        stops,
        [
            kill("proxy", SIGTERM),
            kill("app", SIGTERM),
            kill("app", SIGKILL),
            kill("db", SIGTERM),
        ]
    );
    let term = h.fake.times(&kill("app", SIGTERM))[0];
    let killed = h.fake.times(&kill("app", SIGKILL))[0];
    assert_eq!(killed - term, Duration::from_secs(5));
    for (name, code) in [
        ("proxy", EXIT_SIGTERM),
        ("app", EXIT_SIGKILL),
        ("db", EXIT_SIGTERM),
    ] {
        let c = h.container(name);
        assert_eq!(c.last_status, TaskStatus::Stopped, "{name}");
        assert_eq!(c.exit_code, Some(code as i32), "{name}");
    }
    let report = h.record().report;
    assert_eq!(report.last_status, TaskStatus::Stopping);
    assert_eq!(report.stop_code.as_deref(), Some(STOP_USER));
}

#[tokio::test(start_paused = true)]
async fn adopts_what_an_earlier_agent_left_running_and_judges_what_exited_meanwhile() {
    let h = Harness::new(json!([
        {"name": "app", "image": "app:1",
         "restartPolicy": {"enabled": true, "restartAttemptPeriod": 60}},
        {"name": "sidecar", "image": "sidecar:1", "essential": false},
    ]));
    // The earlier agent started app two minutes ago; sidecar exited while no agent ran.
    h.fake.put(&id("app"), ProcessState::Running { pid: 42 });
    h.fake
        .put(&id("sidecar"), ProcessState::Stopped { exit_code: 3 });
    h.shared.update(&arn(), |r| {
        r.container_started.insert("app".into(), now_secs() - 120.0);
    });
    let sup = h.operate();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(h.fake.calls().is_empty(), "{:?}", h.fake.calls());
    assert_eq!(
        h.fake.process(&id("app")),
        Some(ProcessState::Running { pid: 42 })
    );
    assert_eq!(h.container("app").last_status, TaskStatus::Running);
    assert_eq!(h.container("sidecar").last_status, TaskStatus::Stopped);
    assert_eq!(h.container("sidecar").exit_code, Some(3));
    assert_eq!(h.record().report.last_status, TaskStatus::Running);

    // The adopted container is watched, and the time it ran under the earlier agent counts
    // for restartAttemptPeriod: an exit now restarts it.
    h.fake.exit(&id("app"), 1);
    let exited = Instant::now();
    h.fake
        .until("app's restart", |c| starts_of(c, "app") == 1)
        .await;
    assert_eq!(
        h.fake.times(&start("app"))[0] - exited,
        Duration::from_millis(500)
    );
    assert_eq!(starts_of(&h.fake.calls(), "sidecar"), 0);
    assert!(!sup.is_finished());
}

#[tokio::test(start_paused = true)]
async fn an_agent_shutdown_leaves_containers_running() {
    let h = Harness::new(json!([{"name": "app", "image": "app:1"}]));
    let sup = h.operate();
    h.fake
        .until("app's start", |c| starts_of(c, "app") == 1)
        .await;
    h.shutdown.cancel();
    let (_, out) = outcome(sup).await;
    assert_eq!(out, Outcome::Shutdown);
    assert!(matches!(
        h.fake.process(&id("app")),
        Some(ProcessState::Running { .. })
    ));
    assert_eq!(h.fake.calls(), [start("app")]);
}
