//! The reconciler's decisions as pure functions: when a container may start, whether an
//! exited one is restarted, the order containers stop in, and a task's health. Kept apart
//! from the I/O so each rule is tested on its own.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// ECS `dependsOn.condition`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Condition {
    Start,
    Complete,
    Success,
    Healthy,
}

/// What the reconciler knows of one container when it decides.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct View {
    pub started: bool,
    pub running: bool,
    pub exit_code: Option<i32>,
    pub healthy: bool,
    pub unhealthy: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    Wait,
    /// The condition can no longer be met; the string says why.
    Never(String),
}

/// Whether a container whose dependencies are `deps` may start now.
pub fn readiness(deps: &[(String, Condition)], views: &BTreeMap<String, View>) -> Readiness {
    let mut ready = true;
    for (name, cond) in deps {
        let v = views.get(name).cloned().unwrap_or_default();
        let state = match cond {
            Condition::Start => {
                if v.started {
                    Readiness::Ready
                } else {
                    Readiness::Wait
                }
            }
            Condition::Complete => match v.exit_code {
                Some(_) if !v.running => Readiness::Ready,
                _ => Readiness::Wait,
            },
            Condition::Success => match v.exit_code {
                Some(0) if !v.running => Readiness::Ready,
                Some(code) if !v.running => Readiness::Never(format!(
                    "dependency {name} exited with code {code}, not 0 (condition SUCCESS)"
                )),
                _ => Readiness::Wait,
            },
            Condition::Healthy => {
                if v.healthy {
                    Readiness::Ready
                } else if v.unhealthy {
                    Readiness::Never(format!(
                        "dependency {name} is UNHEALTHY (condition HEALTHY)"
                    ))
                } else if v.started && !v.running {
                    Readiness::Never(format!(
                        "dependency {name} exited before it was HEALTHY (condition HEALTHY)"
                    ))
                } else {
                    Readiness::Wait
                }
            }
        };
        match state {
            Readiness::Ready => {}
            Readiness::Wait => ready = false,
            never @ Readiness::Never(_) => return never,
        }
    }
    if ready {
        Readiness::Ready
    } else {
        Readiness::Wait
    }
}

/// ECS `restartPolicy`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestartPolicy {
    pub enabled: bool,
    pub ignored_exit_codes: Vec<i32>,
    pub attempt_period: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Restart {
    After(Duration),
    No(String),
}

/// Longest pause before a restart, however often a container has restarted in a row.
pub const MAX_RESTART_DELAY: Duration = Duration::from_secs(30);

/// ECS's rule: a container that exits is restarted when its policy is enabled, its exit code
/// is not ignored, and it ran for at least `restartAttemptPeriod` (so a container that
/// fails at once is not restarted in a loop). `consecutive` restarts add a growing pause.
pub fn restart(
    policy: Option<&RestartPolicy>,
    exit_code: i32,
    ran_for: Duration,
    consecutive: u32,
) -> Restart {
    let Some(p) = policy.filter(|p| p.enabled) else {
        return Restart::No("restart policy not enabled".into());
    };
    if p.ignored_exit_codes.contains(&exit_code) {
        return Restart::No(format!("exit code {exit_code} is in ignoredExitCodes"));
    }
    if ran_for < p.attempt_period {
        return Restart::No(format!(
            "ran {}s, less than restartAttemptPeriod {}s",
            ran_for.as_secs(),
            p.attempt_period.as_secs()
        ));
    }
    let delay = Duration::from_millis(500u64.saturating_mul(1 << consecutive.min(10)));
    Restart::After(delay.min(MAX_RESTART_DELAY))
}

/// Start order honouring `dependsOn` (containers with no dependencies first, ties by
/// definition order). Validation has already rejected cycles; any left over are appended.
pub fn start_order(containers: &[(String, Vec<String>)]) -> Vec<String> {
    let mut done: BTreeSet<&str> = BTreeSet::new();
    let mut order = Vec::new();
    while order.len() < containers.len() {
        let before = order.len();
        for (name, deps) in containers {
            if !done.contains(name.as_str()) && deps.iter().all(|d| done.contains(d.as_str())) {
                done.insert(name);
                order.push(name.clone());
            }
        }
        if order.len() == before {
            for (name, _) in containers {
                if done.insert(name) {
                    order.push(name.clone());
                }
            }
        }
    }
    order
}

/// Stop order: dependants before what they depend on.
pub fn stop_order(containers: &[(String, Vec<String>)]) -> Vec<String> {
    let mut order = start_order(containers);
    order.reverse();
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    fn views(v: &[(&str, View)]) -> BTreeMap<String, View> {
        v.iter().map(|(n, v)| (n.to_string(), v.clone())).collect()
    }

    fn dep(n: &str, c: Condition) -> Vec<(String, Condition)> {
        vec![(n.to_string(), c)]
    }

    #[test]
    fn start_condition_waits_for_the_start() {
        let mut v = views(&[("db", View::default())]);
        assert_eq!(readiness(&dep("db", Condition::Start), &v), Readiness::Wait);
        v.get_mut("db").expect("db").started = true;
        v.get_mut("db").expect("db").running = true;
        assert_eq!(
            readiness(&dep("db", Condition::Start), &v),
            Readiness::Ready
        );
    }

    #[test]
    fn success_condition_fails_for_good_on_a_non_zero_exit() {
        let exited = |code| View {
            started: true,
            exit_code: Some(code),
            ..View::default()
        };
        assert_eq!(
            readiness(
                &dep("init", Condition::Success),
                &views(&[("init", exited(0))])
            ),
            Readiness::Ready
        );
        assert!(matches!(
            readiness(&dep("init", Condition::Success), &views(&[("init", exited(3))])),
            Readiness::Never(m) if m.contains("code 3")
        ));
        assert_eq!(
            readiness(
                &dep("init", Condition::Complete),
                &views(&[("init", exited(3))])
            ),
            Readiness::Ready
        );
    }

    #[test]
    fn healthy_condition() {
        let running = View {
            started: true,
            running: true,
            ..View::default()
        };
        let d = dep("db", Condition::Healthy);
        assert_eq!(
            readiness(&d, &views(&[("db", running.clone())])),
            Readiness::Wait
        );
        let healthy = View {
            healthy: true,
            ..running.clone()
        };
        assert_eq!(readiness(&d, &views(&[("db", healthy)])), Readiness::Ready);
        let unhealthy = View {
            unhealthy: true,
            ..running
        };
        assert!(matches!(
            readiness(&d, &views(&[("db", unhealthy)])),
            Readiness::Never(_)
        ));
    }

    #[test]
    fn restart_rules() {
        let p = RestartPolicy {
            enabled: true,
            ignored_exit_codes: vec![0],
            attempt_period: Duration::from_secs(60),
        };
        let long = Duration::from_secs(61);
        assert_eq!(
            restart(Some(&p), 1, long, 0),
            Restart::After(Duration::from_millis(500))
        );
        assert!(
            matches!(restart(Some(&p), 0, long, 0), Restart::No(m) if m.contains("ignoredExitCodes"))
        );
        assert!(matches!(
            restart(Some(&p), 1, Duration::from_secs(5), 0),
            Restart::No(m) if m.contains("restartAttemptPeriod")
        ));
        assert!(matches!(restart(None, 1, long, 0), Restart::No(_)));
        let off = RestartPolicy {
            enabled: false,
            ..p.clone()
        };
        assert!(matches!(restart(Some(&off), 1, long, 0), Restart::No(_)));
        assert_eq!(
            restart(Some(&p), 1, long, 20),
            Restart::After(MAX_RESTART_DELAY)
        );
    }

    #[test]
    fn orders_follow_dependencies() {
        let c = vec![
            ("web".to_string(), vec!["app".to_string()]),
            (
                "app".to_string(),
                vec!["db".to_string(), "init".to_string()],
            ),
            ("db".to_string(), vec![]),
            ("init".to_string(), vec![]),
        ];
        assert_eq!(start_order(&c), vec!["db", "init", "app", "web"]);
        assert_eq!(stop_order(&c), vec!["web", "app", "init", "db"]);
    }
}
