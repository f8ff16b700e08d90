//! The OCI distribution API, client side: manifests and blobs over HTTPS (plain HTTP only
//! for loopback and configured insecure registries), with the bearer token flow and basic
//! credentials.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use reqwest::header::{ACCEPT, CONTENT_RANGE, CONTENT_TYPE, LOCATION, RANGE, WWW_AUTHENTICATE};
use reqwest::{redirect, Response, StatusCode, Url};

use super::manifest::{DOCKER_LIST, DOCKER_MANIFEST, MAX_JSON, OCI_INDEX, OCI_MANIFEST};
use super::reference::Reference;
use super::{Credentials, ImageConfig, ImageError};

/// A bearer token is read whole; anything larger is not a token.
const MAX_TOKEN_RESPONSE: u64 = 1 << 20;

#[derive(Clone)]
enum Auth {
    Bearer(String),
    Basic,
}

pub struct Registry {
    http: reqwest::Client,
    insecure: Vec<String>,
    auths: HashMap<String, Credentials>,
    /// Per "host/repository": what the registry last accepted.
    auth_cache: Mutex<HashMap<String, Auth>>,
}

/// A manifest as the registry served it.
pub struct FetchedManifest {
    pub body: Vec<u8>,
    pub media_type: String,
    /// The registry's `Docker-Content-Digest`, if it sent one.
    pub digest_header: Option<String>,
}

impl Registry {
    pub fn new(config: &ImageConfig) -> Result<Self, reqwest::Error> {
        let insecure = config.insecure.clone();
        // Redirects (blob storage, mirrors) may not downgrade to plain HTTP; a stopped
        // redirect surfaces as a 3xx that `send` reports.
        let policy = redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= 10 {
                attempt.error("more than 10 redirects")
            } else if attempt.url().scheme() == "http"
                && !plain_http_allowed(&insecure, &host_port(attempt.url()))
            {
                attempt.stop()
            } else {
                attempt.follow()
            }
        });
        let http = reqwest::Client::builder()
            .redirect(policy)
            .connect_timeout(Duration::from_secs(15))
            // Stalled streams fail and resume rather than hang a pull forever.
            .read_timeout(Duration::from_secs(60))
            .user_agent(concat!("skerry-agent/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            http,
            insecure: config.insecure.clone(),
            auths: config.auths.clone(),
            auth_cache: Mutex::new(HashMap::new()),
        })
    }

    fn base(&self, r: &Reference) -> String {
        let host = r.registry_host();
        let scheme = if plain_http_allowed(&self.insecure, host) {
            "http"
        } else {
            "https"
        };
        format!("{scheme}://{host}/v2/{}", r.repository)
    }

    fn credentials(&self, r: &Reference) -> Option<&Credentials> {
        self.auths
            .get(&r.domain)
            .or_else(|| self.auths.get(r.registry_host()))
    }

    /// GETs a manifest or index by tag or digest, accepting the OCI and Docker v2 kinds.
    pub async fn manifest(
        &self,
        r: &Reference,
        object: &str,
    ) -> Result<FetchedManifest, ImageError> {
        let url = format!("{}/manifests/{object}", self.base(r));
        let accept = [OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST].join(", ");
        let what = format!("manifest {object}");
        let resp = self.send(r, &url, Some(&accept), 0).await?;
        let resp = self.expect_ok(r, &url, &what, resp).await?;
        let media_type = header(&resp, CONTENT_TYPE).unwrap_or_default();
        let digest_header = header(&resp, "docker-content-digest");
        let body = self.read_limited(r, &what, resp, MAX_JSON).await?;
        Ok(FetchedManifest {
            body,
            media_type,
            digest_header,
        })
    }

    /// GETs a small blob (a config) whole.
    pub async fn small_blob(&self, r: &Reference, digest: &str) -> Result<Vec<u8>, ImageError> {
        let url = format!("{}/blobs/{digest}", self.base(r));
        let what = format!("blob {digest}");
        let resp = self.send(r, &url, None, 0).await?;
        let resp = self.expect_ok(r, &url, &what, resp).await?;
        self.read_limited(r, &what, resp, MAX_JSON).await
    }

    /// GETs a blob from byte `from` on. The answer is 206 from `from`, or 200 from 0 when
    /// the registry ignores Range; `BlobBody::start` says which.
    pub async fn blob(
        &self,
        r: &Reference,
        digest: &str,
        from: u64,
    ) -> Result<BlobBody, ImageError> {
        let url = format!("{}/blobs/{digest}", self.base(r));
        let what = format!("blob {digest}");
        let resp = self.send(r, &url, None, from).await?;
        let resp = self.expect_ok(r, &url, &what, resp).await?;
        let start = if resp.status() == StatusCode::PARTIAL_CONTENT {
            match header(&resp, CONTENT_RANGE)
                .as_deref()
                .and_then(content_range_start)
            {
                Some(s) if s == from => from,
                other => {
                    return Err(ImageError::Transfer {
                        reference: r.to_string(),
                        registry: r.registry_host().to_string(),
                        what,
                        reason: format!("asked for bytes {from}- and got range start {other:?}"),
                    })
                }
            }
        } else {
            0
        };
        Ok(BlobBody { resp, start })
    }

    async fn expect_ok(
        &self,
        r: &Reference,
        url: &str,
        what: &str,
        resp: Response,
    ) -> Result<Response, ImageError> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let detail = body_snippet(resp).await;
        Err(match status {
            StatusCode::NOT_FOUND => ImageError::NotFound {
                reference: r.to_string(),
                what: what.to_string(),
            },
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => ImageError::AuthRefused {
                reference: r.to_string(),
                registry: r.registry_host().to_string(),
                detail: format!("{status} for {what}: {detail}"),
            },
            _ => ImageError::Registry {
                reference: r.to_string(),
                registry: r.registry_host().to_string(),
                url: url.to_string(),
                status: status.as_u16(),
                detail,
            },
        })
    }

    /// Sends a GET, answering one 401 challenge (bearer token or basic credentials) and
    /// remembering what worked for the repository.
    async fn send(
        &self,
        r: &Reference,
        url: &str,
        accept: Option<&str>,
        from: u64,
    ) -> Result<Response, ImageError> {
        let key = format!("{}/{}", r.registry_host(), r.repository);
        let mut answered = false;
        loop {
            let mut req = self.http.get(url);
            if let Some(a) = accept {
                req = req.header(ACCEPT, a);
            }
            if from > 0 {
                req = req.header(RANGE, format!("bytes={from}-"));
            }
            let cached = self.cached_auth(&key);
            match (&cached, self.credentials(r)) {
                (Some(Auth::Bearer(t)), _) => req = req.bearer_auth(t),
                (Some(Auth::Basic), Some(c)) => {
                    req = req.basic_auth(&c.username, Some(&c.password))
                }
                _ => {}
            }
            let resp = req.send().await.map_err(|e| self.unreachable(r, url, e))?;
            if resp.status().is_redirection() {
                let location = header(&resp, LOCATION).unwrap_or_default();
                let host = Url::parse(&location)
                    .map(|u| host_port(&u))
                    .unwrap_or_else(|_| location.clone());
                return Err(ImageError::PlainHttpRefused {
                    reference: r.to_string(),
                    url: location,
                    host,
                });
            }
            if resp.status() != StatusCode::UNAUTHORIZED || answered {
                return Ok(resp);
            }
            answered = true;
            let challenge = header(&resp, WWW_AUTHENTICATE).unwrap_or_default();
            let auth = self.answer(r, &challenge).await?;
            self.auth_cache
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(key.clone(), auth);
        }
    }

    fn cached_auth(&self, key: &str) -> Option<Auth> {
        self.auth_cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()
    }

    async fn answer(&self, r: &Reference, challenge: &str) -> Result<Auth, ImageError> {
        let refused = |detail: String| ImageError::AuthRefused {
            reference: r.to_string(),
            registry: r.registry_host().to_string(),
            detail,
        };
        let (scheme, params) = parse_challenge(challenge);
        match scheme.to_ascii_lowercase().as_str() {
            "bearer" => {
                let realm = params.get("realm").ok_or_else(|| {
                    refused(format!("bearer challenge without a realm: {challenge:?}"))
                })?;
                let scope = params
                    .get("scope")
                    .cloned()
                    .unwrap_or_else(|| format!("repository:{}:pull", r.repository));
                let token = self
                    .token(r, realm, params.get("service").map(String::as_str), &scope)
                    .await?;
                Ok(Auth::Bearer(token))
            }
            "basic" if self.credentials(r).is_some() => Ok(Auth::Basic),
            "basic" => Err(refused(format!(
                "the registry wants credentials; add them under auths.\"{}\" in the image config",
                r.domain
            ))),
            _ => Err(refused(format!("unsupported challenge {challenge:?}"))),
        }
    }

    async fn token(
        &self,
        r: &Reference,
        realm: &str,
        service: Option<&str>,
        scope: &str,
    ) -> Result<String, ImageError> {
        let refused = |detail: String| ImageError::AuthRefused {
            reference: r.to_string(),
            registry: r.registry_host().to_string(),
            detail,
        };
        let mut url = Url::parse(realm)
            .map_err(|e| refused(format!("token realm {realm:?} is not a URL: {e}")))?;
        match url.scheme() {
            "https" => {}
            "http" if plain_http_allowed(&self.insecure, &host_port(&url)) => {}
            "http" => {
                return Err(ImageError::PlainHttpRefused {
                    reference: r.to_string(),
                    url: realm.to_string(),
                    host: host_port(&url),
                })
            }
            other => return Err(refused(format!("token realm has scheme {other:?}"))),
        }
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = service {
                q.append_pair("service", s);
            }
            q.append_pair("scope", scope);
        }
        let mut req = self.http.get(url.clone());
        if let Some(c) = self.credentials(r) {
            req = req.basic_auth(&c.username, Some(&c.password));
        }
        let resp = req
            .send()
            .await
            .map_err(|e| self.unreachable(r, url.as_str(), e))?;
        let status = resp.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            let detail = body_snippet(resp).await;
            return Err(refused(format!(
                "token endpoint answered {status}: {detail}"
            )));
        }
        if !status.is_success() {
            let detail = body_snippet(resp).await;
            return Err(ImageError::Registry {
                reference: r.to_string(),
                registry: r.registry_host().to_string(),
                url: realm.to_string(),
                status: status.as_u16(),
                detail,
            });
        }
        let body = self
            .read_limited(r, "bearer token", resp, MAX_TOKEN_RESPONSE)
            .await?;
        #[derive(serde::Deserialize)]
        struct TokenResponse {
            token: Option<String>,
            access_token: Option<String>,
        }
        let t: TokenResponse = serde_json::from_slice(&body)
            .map_err(|e| refused(format!("token endpoint answered non-JSON: {e}")))?;
        t.token
            .or(t.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| refused("token endpoint answered without a token".to_string()))
    }

    async fn read_limited(
        &self,
        r: &Reference,
        what: &str,
        mut resp: Response,
        max: u64,
    ) -> Result<Vec<u8>, ImageError> {
        let mut out = Vec::new();
        loop {
            match resp.chunk().await {
                Ok(Some(c)) => {
                    if (out.len() + c.len()) as u64 > max {
                        return Err(ImageError::Invalid {
                            reference: r.to_string(),
                            what: what.to_string(),
                            reason: format!("larger than {max} bytes"),
                        });
                    }
                    out.extend_from_slice(&c);
                }
                Ok(None) => return Ok(out),
                Err(e) => {
                    return Err(ImageError::Transfer {
                        reference: r.to_string(),
                        registry: r.registry_host().to_string(),
                        what: what.to_string(),
                        reason: error_chain(&e),
                    })
                }
            }
        }
    }

    fn unreachable(&self, r: &Reference, url: &str, e: reqwest::Error) -> ImageError {
        let chain = error_chain(&e);
        // rustls reading an HTTP answer to its ClientHello: the registry speaks plain HTTP.
        if url.starts_with("https:") && speaks_plain_http(&chain) {
            let host = Url::parse(url).map(|u| host_port(&u)).unwrap_or_default();
            return ImageError::PlainHttpRefused {
                reference: r.to_string(),
                url: url.replacen("https:", "http:", 1),
                host,
            };
        }
        ImageError::Unreachable {
            reference: r.to_string(),
            registry: r.registry_host().to_string(),
            reason: chain,
        }
    }
}

/// A blob response being read; `start` is the offset of its first byte.
pub struct BlobBody {
    resp: Response,
    pub start: u64,
}

impl BlobBody {
    pub async fn chunk(&mut self) -> Result<Option<bytes::Bytes>, String> {
        self.resp.chunk().await.map_err(|e| error_chain(&e))
    }
}

fn header(resp: &Response, name: impl reqwest::header::AsHeaderName) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

async fn body_snippet(resp: Response) -> String {
    let text = resp.text().await.unwrap_or_default();
    let text = text.trim();
    match text.char_indices().nth(300) {
        Some((i, _)) => format!("{}...", &text[..i]),
        None => text.to_string(),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

fn speaks_plain_http(chain: &str) -> bool {
    chain.contains("InvalidContentType") || chain.contains("corrupt message")
}

/// `bytes 100-199/200` -> 100.
fn content_range_start(v: &str) -> Option<u64> {
    v.trim()
        .strip_prefix("bytes ")?
        .split('-')
        .next()?
        .trim()
        .parse()
        .ok()
}

/// Splits `Bearer realm="...",service="...",scope="a:b:pull,push"` into its scheme and
/// parameters; quoted values may hold commas.
fn parse_challenge(h: &str) -> (String, HashMap<String, String>) {
    let h = h.trim();
    let (scheme, rest) = h.split_once(' ').unwrap_or((h, ""));
    let mut params = HashMap::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            value = chars.by_ref().take_while(|c| *c != ',').collect();
        }
        params.insert(key.trim().to_ascii_lowercase(), value.trim().to_string());
    }
    (scheme.to_string(), params)
}

fn host_port(u: &Url) -> String {
    let host = u.host_str().unwrap_or_default();
    match u.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    }
}

/// Plain HTTP is for registries on this machine and ones the operator listed as insecure
/// (by `host:port`, or by host for any port).
pub fn plain_http_allowed(insecure: &[String], host_port: &str) -> bool {
    let host = strip_port(host_port);
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    loopback || insecure.iter().any(|i| i == host_port || i == host)
}

fn strip_port(host_port: &str) -> &str {
    if let Some(rest) = host_port.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host_port.matches(':').count() {
        1 => host_port.split(':').next().unwrap_or(host_port),
        _ => host_port,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_for_loopback_and_listed_registries() {
        let insecure = vec!["10.1.2.3:5000".to_string(), "lan-registry".to_string()];
        for ok in [
            "127.0.0.1:5000",
            "127.3.4.5",
            "localhost:5000",
            "[::1]:5000",
            "10.1.2.3:5000",
            "lan-registry:443",
        ] {
            assert!(plain_http_allowed(&insecure, ok), "{ok}");
        }
        for no in [
            "10.1.2.3:5001",
            "registry-1.docker.io",
            "public.ecr.aws",
            "[::2]:5000",
        ] {
            assert!(!plain_http_allowed(&insecure, no), "{no}");
        }
    }

    #[test]
    fn challenges_with_quoted_commas_parse() {
        let (s, p) = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull,push""#,
        );
        assert_eq!(s, "Bearer");
        assert_eq!(p["realm"], "https://auth.docker.io/token");
        assert_eq!(p["service"], "registry.docker.io");
        assert_eq!(p["scope"], "repository:library/busybox:pull,push");
        let (s, p) = parse_challenge(r#"Basic realm="Registry Realm""#);
        assert_eq!(s, "Basic");
        assert_eq!(p["realm"], "Registry Realm");
    }

    /// What rustls reports when a plain HTTP server answers its ClientHello must be read as
    /// "this registry speaks plain HTTP", so the error can say how to allow it.
    #[tokio::test]
    async fn https_to_a_plain_http_server_is_recognized() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local address");
        let server = tokio::spawn(async move {
            if let Ok((mut c, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = c.read(&mut buf).await;
                let _ = c
                    .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                    .await;
            }
        });
        let registry = Registry::new(&ImageConfig::default()).expect("client");
        let r = Reference::parse(&format!("{addr}/x")).expect("reference");
        let url = format!("https://{addr}/v2/");
        let err = registry
            .http
            .get(&url)
            .send()
            .await
            .expect_err("a plain HTTP server does not speak TLS");
        let mapped = registry.unreachable(&r, &url, err);
        assert!(
            matches!(mapped, ImageError::PlainHttpRefused { .. }),
            "{mapped}"
        );
        assert!(mapped.to_string().contains("insecure"), "{mapped}");
        server.abort();
    }

    #[test]
    fn content_range_start_is_read() {
        assert_eq!(content_range_start("bytes 100-199/200"), Some(100));
        assert_eq!(content_range_start("bytes */200"), None);
    }
}
