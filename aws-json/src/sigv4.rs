//! AWS Signature Version 4 verification of the `Authorization` header form, the one the
//! aws CLI and SDKs send. The hub recomputes the signature from the request as received and
//! compares it with the one the client sent; it never needs the client's clock beyond the
//! skew check.
//!
//! Not supported, because no aws CLI or SDK call to this API uses them: query-string
//! (presigned) signatures, the `Date` header instead of `X-Amz-Date`, session tokens, and
//! path normalisation (the JSON protocol always posts to `/`).

use hmac::{Hmac, Mac};
use http::header::HeaderMap;
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// How far the client's `X-Amz-Date` may be from the hub's clock, either way.
pub const MAX_SKEW_SECS: i64 = 15 * 60;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SigV4Error {
    #[error(
        "missing authentication token: the request has no Authorization header; sign it with SigV4"
    )]
    Missing,
    #[error("malformed Authorization header: {0}")]
    Malformed(String),
    #[error("the security token included in the request is invalid: unknown access key id {0:?}")]
    UnknownKey(String),
    #[error("signature expired: X-Amz-Date {date} is more than 15 minutes away from the hub's time {now}; check the client's clock")]
    Skew { date: String, now: String },
    #[error("the request signature we calculated does not match the signature you provided; check your AWS secret access key and signing method")]
    Mismatch,
}

impl SigV4Error {
    /// The error code AWS services answer with, which the aws CLI prints.
    pub fn aws_code(&self) -> &'static str {
        match self {
            SigV4Error::Missing | SigV4Error::UnknownKey(_) => "UnrecognizedClientException",
            _ => "InvalidSignatureException",
        }
    }
}

/// A request whose signature checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub access_key_id: String,
    pub region: String,
    pub service: String,
    /// Lowercase names of the headers the signature covers.
    pub signed_headers: Vec<String>,
}

/// The parts of a request that go into its signature. `path` and `query` are as they came
/// over the wire (still percent-encoded).
pub struct Signed<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
}

struct Authorization<'a> {
    access_key_id: &'a str,
    date: &'a str,
    region: &'a str,
    service: &'a str,
    signed_headers: Vec<&'a str>,
    signature: Vec<u8>,
}

fn parse_authorization(value: &str) -> Result<Authorization<'_>, SigV4Error> {
    let malformed = |m: &str| SigV4Error::Malformed(m.to_string());
    let rest = value
        .strip_prefix(ALGORITHM)
        .and_then(|r| r.strip_prefix(' '))
        .ok_or_else(|| malformed("expected algorithm AWS4-HMAC-SHA256"))?;
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let (k, v) = part
            .trim()
            .split_once('=')
            .ok_or_else(|| malformed("expected key=value pairs"))?;
        match k {
            "Credential" => credential = Some(v),
            "SignedHeaders" => signed = Some(v),
            "Signature" => signature = Some(v),
            _ => return Err(malformed(&format!("unknown component {k:?}"))),
        }
    }
    let credential = credential.ok_or_else(|| malformed("missing Credential"))?;
    let signed = signed.ok_or_else(|| malformed("missing SignedHeaders"))?;
    let signature = signature.ok_or_else(|| malformed("missing Signature"))?;
    let scope: Vec<&str> = credential.split('/').collect();
    let [access_key_id, date, region, service, "aws4_request"] = scope[..] else {
        return Err(malformed(
            "Credential must be ACCESS_KEY/YYYYMMDD/REGION/SERVICE/aws4_request",
        ));
    };
    let signature =
        hex::decode(signature).map_err(|_| malformed("Signature is not hex-encoded"))?;
    Ok(Authorization {
        access_key_id,
        date,
        region,
        service,
        signed_headers: signed.split(';').collect(),
        signature,
    })
}

/// Checks the request's signature with the secret `secret_for` returns for its access key,
/// at the hub's time `now` (Unix seconds).
pub fn verify<'s>(
    req: &Signed<'_>,
    secret_for: impl Fn(&str) -> Option<&'s str>,
    now: i64,
) -> Result<Verified, SigV4Error> {
    let auth = req
        .headers
        .get(http::header::AUTHORIZATION)
        .ok_or(SigV4Error::Missing)?
        .to_str()
        .map_err(|_| SigV4Error::Malformed("Authorization is not ASCII".into()))?;
    let auth = parse_authorization(auth)?;
    let secret = secret_for(auth.access_key_id)
        .ok_or_else(|| SigV4Error::UnknownKey(auth.access_key_id.to_string()))?;
    for required in ["host", "x-amz-date"] {
        if !auth.signed_headers.contains(&required) {
            return Err(SigV4Error::Malformed(format!(
                "SignedHeaders must include {required}"
            )));
        }
    }
    let amz_date = header_value(req.headers, "x-amz-date")
        .ok_or_else(|| SigV4Error::Malformed("missing X-Amz-Date header".into()))?;
    let then = parse_amz_date(&amz_date).ok_or_else(|| {
        SigV4Error::Malformed(format!("X-Amz-Date {amz_date:?} is not YYYYMMDDTHHMMSSZ"))
    })?;
    if (now - then).abs() > MAX_SKEW_SECS {
        return Err(SigV4Error::Skew {
            date: amz_date,
            now: format_amz_date(now),
        });
    }
    if !amz_date.starts_with(auth.date) || auth.date.len() != 8 {
        return Err(SigV4Error::Malformed(format!(
            "credential date {} does not match X-Amz-Date {amz_date}",
            auth.date
        )));
    }
    let creq = canonical_request(req, &auth.signed_headers)?;
    let sts = string_to_sign(&amz_date, auth.date, auth.region, auth.service, &creq);
    let key = signing_key(secret, auth.date, auth.region, auth.service);
    let mut mac = HmacSha256::new_from_slice(&key).expect("HMAC accepts keys of any length");
    mac.update(sts.as_bytes());
    // verify_slice compares in constant time, so the comparison leaks nothing.
    mac.verify_slice(&auth.signature)
        .map_err(|_| SigV4Error::Mismatch)?;
    Ok(Verified {
        access_key_id: auth.access_key_id.to_string(),
        region: auth.region.to_string(),
        service: auth.service.to_string(),
        signed_headers: auth.signed_headers.iter().map(|h| h.to_string()).collect(),
    })
}

/// The `Authorization` header value for `req` signed over `signed_headers` (lowercase,
/// sorted, each present in `req.headers`) at `amz_date`: how the `skerry` CLI and tests
/// sign (the hub only verifies).
pub fn authorization(
    req: &Signed<'_>,
    signed_headers: &[&str],
    key: (&str, &str),
    amz_date: &str,
    region: &str,
    service: &str,
) -> Result<String, SigV4Error> {
    let (access_key_id, secret) = key;
    let date = amz_date.get(..8).ok_or_else(|| {
        SigV4Error::Malformed(format!("X-Amz-Date {amz_date:?} is not YYYYMMDDTHHMMSSZ"))
    })?;
    let creq = canonical_request(req, signed_headers)?;
    let sts = string_to_sign(amz_date, date, region, service, &creq);
    let signature = hmac(&signing_key(secret, date, region, service), sts.as_bytes());
    Ok(format!(
        "{ALGORITHM} Credential={access_key_id}/{date}/{region}/{service}/aws4_request, SignedHeaders={}, Signature={}",
        signed_headers.join(";"),
        hex::encode(signature)
    ))
}

/// All values of a header joined by commas, each trimmed with inner runs of spaces
/// collapsed, as the canonical form wants them. `None` if absent or not visible ASCII.
fn header_value(headers: &HeaderMap, name: &str) -> Option<String> {
    let mut values = Vec::new();
    for v in headers.get_all(name) {
        let v = v.to_str().ok()?;
        values.push(v.split_whitespace().collect::<Vec<_>>().join(" "));
    }
    if values.is_empty() {
        None
    } else {
        Some(values.join(","))
    }
}

pub fn canonical_request(req: &Signed<'_>, signed_headers: &[&str]) -> Result<String, SigV4Error> {
    let mut out = String::new();
    out.push_str(req.method);
    out.push('\n');
    // Non-S3 services encode the (already encoded) path once more.
    out.push_str(&uri_encode(req.path, false));
    out.push('\n');
    out.push_str(&canonical_query(req.query));
    out.push('\n');
    for name in signed_headers {
        let value = header_value(req.headers, name).ok_or_else(|| {
            SigV4Error::Malformed(format!(
                "signed header {name:?} is missing from the request"
            ))
        })?;
        out.push_str(name);
        out.push(':');
        out.push_str(&value);
        out.push('\n');
    }
    out.push('\n');
    out.push_str(&signed_headers.join(";"));
    out.push('\n');
    out.push_str(&hex::encode(Sha256::digest(req.body)));
    Ok(out)
}

fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (
                uri_encode(&percent_decode(k), true),
                uri_encode(&percent_decode(v), true),
            )
        })
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// RFC 3986 encoding of everything but the unreserved characters (and `/` in paths).
fn uri_encode(s: &str, encode_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b'/' if !encode_slash => out.push('/'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            if let Some(Ok(b)) = s.get(i + 1..i + 3).map(|h| u8::from_str_radix(h, 16)) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn string_to_sign(
    amz_date: &str,
    date: &str,
    region: &str,
    service: &str,
    canonical_request: &str,
) -> String {
    format!(
        "{ALGORITHM}\n{amz_date}\n{date}/{region}/{service}/aws4_request\n{}",
        hex::encode(Sha256::digest(canonical_request.as_bytes()))
    )
}

pub fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> Vec<u8> {
    let k_date = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k_region = hmac(&k_date, region.as_bytes());
    let k_service = hmac(&k_region, service.as_bytes());
    hmac(&k_service, b"aws4_request")
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

/// `YYYYMMDDTHHMMSSZ` to Unix seconds.
pub fn parse_amz_date(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        if !part.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        part.parse().ok()
    };
    let (y, m, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (hh, mm, ss) = (num(9..11)?, num(11..13)?, num(13..15)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    Some(days_from_civil(y, m, d) * 86_400 + hh * 3600 + mm * 60 + ss)
}

pub fn format_amz_date(t: i64) -> String {
    let (days, secs) = (t.div_euclid(86_400), t.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

// Howard Hinnant's proleptic Gregorian day arithmetic; exact for any date the clock gives.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::{HeaderName, HeaderValue};

    // The AWS SigV4 test suite's credentials and clock (aws-sig-v4-test-suite).
    const KEY_ID: &str = "AKIDEXAMPLE";
    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    const DATE: &str = "20150830T123600Z";

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).expect("test header name"),
                HeaderValue::from_str(v).expect("test header value"),
            );
        }
        h
    }

    fn authz(signed: &str, sig: &str) -> String {
        format!("AWS4-HMAC-SHA256 Credential={KEY_ID}/20150830/us-east-1/service/aws4_request, SignedHeaders={signed}, Signature={sig}")
    }

    fn check(method: &str, query: &str, extra: &[(&str, &str)], signed: &str, sig: &str) {
        let a = authz(signed, sig);
        let mut pairs = vec![
            ("host", "example.amazonaws.com"),
            ("x-amz-date", DATE),
            ("authorization", a.as_str()),
        ];
        pairs.extend_from_slice(extra);
        let h = headers(&pairs);
        let req = Signed {
            method,
            path: "/",
            query,
            headers: &h,
            body: b"",
        };
        let now = parse_amz_date(DATE).expect("suite date parses");
        let secret = |id: &str| (id == KEY_ID).then_some(SECRET);
        assert_eq!(
            verify(&req, secret, now),
            Ok(Verified {
                access_key_id: KEY_ID.into(),
                region: "us-east-1".into(),
                service: "service".into(),
                signed_headers: signed.split(';').map(String::from).collect(),
            })
        );
        // One changed hex digit must fail.
        let mut bad = sig.to_string();
        bad.replace_range(0..1, if sig.starts_with('0') { "1" } else { "0" });
        let a = authz(signed, &bad);
        let mut h = h.clone();
        h.insert("authorization", HeaderValue::from_str(&a).expect("ascii"));
        let req = Signed { headers: &h, ..req };
        assert_eq!(verify(&req, secret, now), Err(SigV4Error::Mismatch));
    }

    #[test]
    fn suite_get_vanilla() {
        check(
            "GET",
            "",
            &[],
            "host;x-amz-date",
            "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
        );
    }

    #[test]
    fn suite_post_vanilla() {
        check(
            "POST",
            "",
            &[],
            "host;x-amz-date",
            "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b",
        );
    }

    #[test]
    fn suite_post_header_key_sort() {
        check(
            "POST",
            "",
            &[("my-header1", "value1")],
            "host;my-header1;x-amz-date",
            "c5410059b04c1ee005303aed430f6e6645f61f4dc9e1461ec8f8916fdf18852c",
        );
    }

    #[test]
    fn suite_get_vanilla_empty_query_key() {
        check(
            "GET",
            "Param1=value1",
            &[],
            "host;x-amz-date",
            "a67d582fa61cc504c4bae71f336f98b97f1ea3c7a6bfe1b6e45aec72011b9aeb",
        );
    }

    #[test]
    fn suite_get_vanilla_utf8_query() {
        check(
            "GET",
            "%E1%88%B4=bar",
            &[],
            "host;x-amz-date",
            "2cdec8eed098649ff3a119c94853b13c643bcf08f8b0a1d91e12c9027818dd04",
        );
    }

    #[test]
    fn older_suite_signature_from_string_to_sign() {
        // The 2011 suite's "host" service example: string to sign -> signature.
        let sts = "AWS4-HMAC-SHA256\n20110909T233600Z\n20110909/us-east-1/host/aws4_request\ne25f777ba161a0f1baf778a87faf057187cf5987f17953320e3ca399feb5f00d";
        let key = signing_key(SECRET, "20110909", "us-east-1", "host");
        assert_eq!(
            hex::encode(hmac(&key, sts.as_bytes())),
            "be7148d34ebccdc6423b19085378aa0bee970bdc61d144bd1a8c48c33079ab09"
        );
    }

    #[test]
    fn unknown_key_missing_header_and_skew_are_refused() {
        let a = authz("host;x-amz-date", "00");
        let h = headers(&[
            ("host", "example.amazonaws.com"),
            ("x-amz-date", DATE),
            ("authorization", &a),
        ]);
        let req = Signed {
            method: "GET",
            path: "/",
            query: "",
            headers: &h,
            body: b"",
        };
        let now = parse_amz_date(DATE).expect("suite date parses");
        let err = verify(&req, |_| None, now).expect_err("unknown key");
        assert_eq!(err.aws_code(), "UnrecognizedClientException");
        let err = verify(&req, |_| Some(SECRET), now + MAX_SKEW_SECS + 1).expect_err("skew");
        assert!(matches!(err, SigV4Error::Skew { .. }), "{err:?}");
        assert_eq!(err.aws_code(), "InvalidSignatureException");
        let h = headers(&[("host", "example.amazonaws.com")]);
        let req = Signed { headers: &h, ..req };
        assert_eq!(
            verify(&req, |_| Some(SECRET), now),
            Err(SigV4Error::Missing)
        );
    }

    #[test]
    fn authorization_matches_the_suite_and_verifies() {
        let h = headers(&[("host", "example.amazonaws.com"), ("x-amz-date", DATE)]);
        let req = Signed {
            method: "GET",
            path: "/",
            query: "",
            headers: &h,
            body: b"",
        };
        let a = authorization(
            &req,
            &["host", "x-amz-date"],
            (KEY_ID, SECRET),
            DATE,
            "us-east-1",
            "service",
        )
        .expect("sign");
        assert_eq!(
            a,
            authz(
                "host;x-amz-date",
                "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
            )
        );
    }

    #[test]
    fn amz_dates_round_trip() {
        let t = parse_amz_date(DATE).expect("parses");
        assert_eq!(t, 1_440_938_160);
        assert_eq!(format_amz_date(t), DATE);
        assert_eq!(
            parse_amz_date("20240229T000000Z")
                .map(format_amz_date)
                .as_deref(),
            Some("20240229T000000Z")
        );
        assert_eq!(parse_amz_date("2015-08-30T12:36:00Z"), None);
    }
}
