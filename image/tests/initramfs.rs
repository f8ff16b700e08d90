//! The initramfs's init runs under BusyBox ash on the device: POSIX sh, shellcheck-clean
//! (scripts/test checks scripts/ only).

use std::path::Path;
use std::process::Command;

#[test]
fn init_is_posix_sh_and_shellcheck_clean() {
    let init = Path::new(env!("CARGO_MANIFEST_DIR")).join("initramfs/init");
    let text = std::fs::read_to_string(&init).expect("read initramfs/init");
    assert!(text.starts_with("#!/bin/sh\n"), "not a #!/bin/sh script");
    let out = Command::new("shellcheck")
        .args(["-s", "sh"])
        .arg(&init)
        .output()
        .expect("run shellcheck (scripts/setup installs it)");
    assert!(
        out.status.success(),
        "shellcheck initramfs/init:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
