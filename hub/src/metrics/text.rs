//! The Prometheus text exposition format (version 0.0.4), written by hand: the hub emits a
//! few dozen families whose names are constants, so a small encoder that escapes label
//! values and formats floats the way Prometheus parses them is all that is needed.

use std::fmt::Write;

/// The `Content-Type` of what [`Encoder`] writes.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// Writes families into one text body. Each family is announced once with
/// [`Encoder::family`], then its samples follow; the format requires a family's samples to
/// be contiguous, which callers get by writing one family at a time.
#[derive(Default)]
pub struct Encoder {
    out: String,
}

impl Encoder {
    pub fn new() -> Encoder {
        Encoder::default()
    }

    /// `# HELP` and `# TYPE` lines. `name` and `help` are the hub's own constants: help
    /// text is still escaped (backslash and newline) so a later edit cannot break the body.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) {
        debug_assert!(is_metric_name(name), "{name}");
        self.out.push_str("# HELP ");
        self.out.push_str(name);
        self.out.push(' ');
        for c in help.chars() {
            match c {
                '\\' => self.out.push_str("\\\\"),
                '\n' => self.out.push_str("\\n"),
                c => self.out.push(c),
            }
        }
        let _ = writeln!(self.out, "\n# TYPE {name} {}", kind.name());
    }

    /// One sample line: `name{label="value",...} value`. Label names are the hub's
    /// constants; values may come from anywhere and are escaped.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (key, value)) in labels.iter().enumerate() {
                debug_assert!(is_label_name(key), "{key}");
                if i > 0 {
                    self.out.push(',');
                }
                self.out.push_str(key);
                self.out.push_str("=\"");
                escape_label_value(&mut self.out, value);
                self.out.push('"');
            }
            self.out.push('}');
        }
        self.out.push(' ');
        write_value(&mut self.out, value);
        self.out.push('\n');
    }

    pub fn finish(self) -> String {
        self.out
    }
}

/// Backslash, double quote and line feed are the three characters the format escapes in a
/// label value; everything else, any UTF-8, stands as is.
fn escape_label_value(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Integers without a fraction (counters stay readable), the special values as Prometheus
/// spells them, everything else in Rust's shortest round-trip form.
fn write_value(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        let _ = write!(out, "{}", v as i64);
    } else {
        let _ = write!(out, "{v}");
    }
}

fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with("__")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn family_and_samples() {
        let mut e = Encoder::new();
        e.family("skerry_up", Kind::Gauge, "Whether it is up.");
        e.sample("skerry_up", &[], 1.0);
        e.sample("skerry_up", &[("a", "x"), ("b", "y")], 0.25);
        assert_eq!(
            e.finish(),
            "# HELP skerry_up Whether it is up.\n# TYPE skerry_up gauge\n\
             skerry_up 1\nskerry_up{a=\"x\",b=\"y\"} 0.25\n"
        );
    }

    #[test]
    fn label_values_and_help_are_escaped() {
        let mut e = Encoder::new();
        e.family("m", Kind::Counter, "a \\ b\nc");
        e.sample("m_total", &[("v", "q\"uo\\te\nnl ü")], 3.0);
        assert_eq!(
            e.finish(),
            "# HELP m a \\\\ b\\nc\n# TYPE m counter\nm_total{v=\"q\\\"uo\\\\te\\nnl ü\"} 3\n"
        );
    }

    #[test]
    fn values_as_prometheus_reads_them() {
        let mut s = String::new();
        for v in [
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            -2.0,
            1e20,
            0.1,
            1.5e-7,
        ] {
            write_value(&mut s, v);
            s.push(' ');
        }
        assert_eq!(s, "NaN +Inf -Inf -2 100000000000000000000 0.1 0.00000015 ");
        for v in [
            "NaN",
            "+Inf",
            "-Inf",
            "-2",
            "100000000000000000000",
            "0.1",
            "0.00000015",
        ] {
            assert!(v.parse::<f64>().is_ok() || v == "+Inf", "{v}");
        }
    }

    #[test]
    fn names_are_checked() {
        assert!(is_metric_name("skerry_hub_api_requests_total"));
        assert!(!is_metric_name("1x"));
        assert!(!is_metric_name("a-b"));
        assert!(is_label_name("task_id"));
        assert!(!is_label_name("__name__"));
        assert!(!is_label_name("a.b"));
    }
}
