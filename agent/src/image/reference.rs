//! Image references as Docker and containerd spell them: `busybox` is
//! `docker.io/library/busybox:latest`, and a task definition's image string must name the
//! same containerd image record whether it came from a pull or from an archive.

use std::fmt;

/// The registry Docker Hub images are named under.
const DOCKER_HUB: &str = "docker.io";
/// Where Docker Hub's registry API actually answers.
const DOCKER_HUB_REGISTRY: &str = "registry-1.docker.io";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    /// Registry host, with its port if any (`docker.io`, `127.0.0.1:5000`).
    pub domain: String,
    /// Repository path inside the registry (`library/busybox`).
    pub repository: String,
    pub tag: Option<String>,
    /// `sha256:<hex>`; when set, it pins the manifest (or index) the reference names.
    pub digest: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct ReferenceError(String);

impl Reference {
    pub fn parse(s: &str) -> Result<Self, ReferenceError> {
        let fail = |why: &str| Err(ReferenceError(why.to_string()));
        if s.is_empty() {
            return fail("empty reference");
        }
        if s.contains("://") {
            return fail("a reference has no scheme: write host[:port]/repository[:tag]");
        }
        let (name, digest) = match s.split_once('@') {
            Some((n, d)) => (n, Some(d)),
            None => (s, None),
        };
        if let Some(d) = digest {
            check_digest(d).map_err(ReferenceError)?;
        }
        // A ':' after the last '/' starts the tag; earlier ones belong to a host:port.
        let last_slash = name.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name[last_slash..].rfind(':') {
            Some(i) => (&name[..last_slash + i], Some(&name[last_slash + i + 1..])),
            None => (name, None),
        };
        if let Some(t) = tag {
            check_tag(t).map_err(ReferenceError)?;
        }
        let (domain, path) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), rest.to_string())
            }
            _ => (DOCKER_HUB.to_string(), name.to_string()),
        };
        let domain = if domain == "index.docker.io" {
            DOCKER_HUB.to_string()
        } else {
            domain
        };
        check_domain(&domain).map_err(ReferenceError)?;
        let repository = if domain == DOCKER_HUB && !path.contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        check_repository(&repository).map_err(ReferenceError)?;
        let tag = match (tag, digest) {
            (None, None) => Some("latest".to_string()),
            (t, _) => t.map(str::to_string),
        };
        Ok(Self {
            domain,
            repository,
            tag,
            digest: digest.map(str::to_string),
        })
    }

    /// The host (and port) whose `/v2/` API serves this reference.
    pub fn registry_host(&self) -> &str {
        if self.domain == DOCKER_HUB {
            DOCKER_HUB_REGISTRY
        } else {
            &self.domain
        }
    }

    /// What to ask the manifests endpoint for: the digest if pinned, else the tag.
    pub fn object(&self) -> &str {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d,
            (None, Some(t)) => t,
            (None, None) => "latest",
        }
    }
}

/// The fully qualified name, as containerd records the image.
impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.domain, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

pub(crate) fn check_digest(d: &str) -> Result<(), String> {
    let Some(hex) = d.strip_prefix("sha256:") else {
        return Err(format!("digest {d:?} is not sha256:<64 hex digits>"));
    };
    if hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(())
    } else {
        Err(format!("digest {d:?} is not sha256:<64 hex digits>"))
    }
}

fn check_tag(t: &str) -> Result<(), String> {
    let ok = !t.is_empty()
        && t.len() <= 128
        && t.bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "tag {t:?} is invalid: up to 128 of letters, digits, '_', '.', '-', not starting with '.' or '-'"
        ))
    }
}

fn check_domain(d: &str) -> Result<(), String> {
    let ok = !d.is_empty()
        && d.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'));
    if ok {
        Ok(())
    } else {
        Err(format!("registry host {d:?} is invalid"))
    }
}

fn check_repository(r: &str) -> Result<(), String> {
    if r.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(format!("repository {r:?} must be lowercase"));
    }
    let component_ok = |c: &str| {
        let b = c.as_bytes();
        !b.is_empty()
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter()
                .all(|&x| x.is_ascii_alphanumeric() || matches!(x, b'.' | b'_' | b'-'))
    };
    if r.split('/').all(component_ok) {
        Ok(())
    } else {
        Err(format!(
            "repository {r:?} is invalid: '/'-separated lowercase letters, digits and '.', '_', '-'"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full(s: &str) -> String {
        Reference::parse(s).expect("valid reference").to_string()
    }

    #[test]
    fn docker_hub_short_names_expand() {
        assert_eq!(full("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(full("busybox:1.36"), "docker.io/library/busybox:1.36");
        assert_eq!(full("grafana/grafana"), "docker.io/grafana/grafana:latest");
        assert_eq!(
            full("index.docker.io/library/busybox"),
            "docker.io/library/busybox:latest"
        );
        let r = Reference::parse("busybox").expect("valid");
        assert_eq!(r.registry_host(), "registry-1.docker.io");
    }

    #[test]
    fn host_port_and_paths() {
        let r = Reference::parse("127.0.0.1:5000/busybox:docker").expect("valid");
        assert_eq!(r.domain, "127.0.0.1:5000");
        assert_eq!(r.repository, "busybox");
        assert_eq!(r.tag.as_deref(), Some("docker"));
        assert_eq!(r.registry_host(), "127.0.0.1:5000");
        let r = Reference::parse("localhost:5000/a/b").expect("valid");
        assert_eq!(r.to_string(), "localhost:5000/a/b:latest");
        assert_eq!(
            full("public.ecr.aws/nginx/nginx:latest"),
            "public.ecr.aws/nginx/nginx:latest"
        );
        // A first component without '.', ':' or "localhost" is a Docker Hub namespace.
        assert_eq!(full("myhost/app"), "docker.io/myhost/app:latest");
    }

    #[test]
    fn digests_pin_the_manifest() {
        let d = format!("sha256:{}", "a".repeat(64));
        let r = Reference::parse(&format!("busybox@{d}")).expect("valid");
        assert_eq!(r.tag, None);
        assert_eq!(r.object(), d);
        assert_eq!(r.to_string(), format!("docker.io/library/busybox@{d}"));
        let r = Reference::parse(&format!("h:1/x:t@{d}")).expect("valid");
        assert_eq!(r.tag.as_deref(), Some("t"));
        assert_eq!(r.object(), d);
    }

    #[test]
    fn invalid_references_say_why() {
        for bad in [
            "",
            "Busybox",
            "busybox@sha256:123",
            "busybox@md5:00",
            "https://reg/x",
            "busybox:-x",
            "reg:5000//x",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad:?} should be rejected");
        }
        let e = Reference::parse("Busybox").expect_err("uppercase");
        assert!(e.to_string().contains("lowercase"), "{e}");
    }
}
