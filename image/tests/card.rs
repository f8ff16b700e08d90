//! `provision` and `preload` against a real card image: the qemu-aarch64-virt board's
//! genimage.cfg built by genimage with stand-ins for the kernel (as
//! scripts/check-firmware-tree does), then read back with mtools.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use skerry_card::{bootstrap, preload, provision};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("image/ sits in the repository")
        .to_path_buf()
}

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (scripts/setup installs it)"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A card built from the board's genimage.cfg in `dir`; returns its path.
fn card(dir: &Path) -> PathBuf {
    let board = repo().join("board");
    let (input, root, tmp, out) = (
        dir.join("in"),
        dir.join("root"),
        dir.join("tmp"),
        dir.join("out"),
    );
    for d in [&input, &root, &tmp, &out] {
        std::fs::create_dir_all(d).expect("mkdir");
    }
    run(Command::new("cp")
        .arg("-r")
        .arg(board.join("common/boot/skerry"))
        .arg(&input));
    // Stand-ins for the boot script and the kernel; slot B's placeholder.
    std::fs::write(input.join("boot.scr"), vec![0x27; 512]).expect("boot.scr");
    std::fs::write(input.join("Image"), vec![0x5a; 4096]).expect("Image");
    std::fs::write(input.join("EMPTY.TXT"), "empty\n").expect("EMPTY.TXT");
    run(Command::new("mksquashfs")
        .arg(board.join("common/rootfs-overlay"))
        .arg(input.join("rootfs.squashfs"))
        .args(["-all-root", "-quiet", "-noappend"]));
    run(Command::new("genimage")
        .arg("--rootpath")
        .arg(&root)
        .arg("--tmppath")
        .arg(&tmp)
        .arg("--inputpath")
        .arg(&input)
        .arg("--outputpath")
        .arg(&out)
        .arg("--config")
        .arg(board.join("qemu-aarch64-virt/genimage.cfg")));
    out.join("sdcard.img")
}

/// A file on the card's boot partition read with mtype; `None` when it is not there.
fn mtype(img: &Path, path: &str) -> Option<Vec<u8>> {
    // Partition 1 starts at 4 MiB, the layout's alignment (check-firmware-tree checks it).
    let out = Command::new("mtype")
        .arg("-i")
        .arg(format!("{}@@{}", img.display(), 4 << 20))
        .arg(format!("::/{path}"))
        .env("MTOOLS_SKIP_CHECK", "1")
        .output()
        .expect("mtype (mtools)");
    out.status.success().then_some(out.stdout)
}

const GOOD: &str = r#"hub_url = "https://10.0.2.2:8443"
activation_id = "1da5d8c4-2a28-44b5-ac86-911892afea04"
activation_code = "z8Dou5q22cYMhuHuc0ww"
cluster = "default"
ca_fingerprint = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

[attributes]
site = "barn"
"#;

#[test]
fn provision_writes_the_file_and_refuses_bad_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let img = card(dir.path());
    let file = dir.path().join("provision.toml");

    // Bad files are refused, naming the key, and nothing reaches the card.
    let cases = [
        (GOOD.replace("cluster", "clustr"), "unknown key \"clustr\""),
        (
            GOOD.replace("activation_code = \"z8Dou5q22cYMhuHuc0ww\"\n", ""),
            "activation_code is missing",
        ),
        (
            GOOD.replace("https://", "ftp://"),
            "hub_url must be an http(s):// URL",
        ),
        (
            GOOD.replace("0123456789abcdef0123", "0123"),
            "ca_fingerprint must be",
        ),
        (
            GOOD.replace("site = \"barn\"", "site = 3"),
            "attributes.site must be a string",
        ),
        ("hub_url = ".to_string(), "is not TOML"),
    ];
    for (text, want) in cases {
        std::fs::write(&file, &text).expect("write");
        let err = provision::provision(&img, &file)
            .expect_err(want)
            .to_string();
        assert!(
            err.contains(want) && err.contains("provision.toml"),
            "{want}: {err}"
        );
        assert_eq!(
            mtype(&img, provision::CARD_PATH),
            None,
            "{want}: written anyway"
        );
    }

    std::fs::write(&file, GOOD).expect("write");
    provision::provision(&img, &file).expect("provision");
    assert_eq!(
        mtype(&img, provision::CARD_PATH).as_deref(),
        Some(GOOD.as_bytes())
    );
    // The board's README next to it is untouched.
    let readme = mtype(&img, "skerry/README.txt").expect("README.txt");
    assert!(String::from_utf8_lossy(&readme).contains("provision.toml"));

    // Again, shorter: replaced, not appended to or refused.
    let second = GOOD.replace("\n[attributes]\nsite = \"barn\"\n", "");
    std::fs::write(&file, &second).expect("write");
    provision::provision(&img, &file).expect("provision again");
    assert_eq!(
        mtype(&img, provision::CARD_PATH).as_deref(),
        Some(second.as_bytes())
    );

    // Not a card: a file without a partition table, and a compressed image.
    let junk = dir.path().join("junk.img");
    std::fs::write(&junk, vec![0u8; 4096]).expect("write");
    let err = provision::provision(&junk, &file)
        .expect_err("no table")
        .to_string();
    assert!(err.contains("junk.img") && err.contains("no MBR"), "{err}");
    // What `xz -k` of a card starts with.
    let xz = dir.path().join("sdcard.img.xz");
    std::fs::write(
        &xz,
        [&[0xfd, b'7', b'z', b'X', b'Z', 0][..], &[0u8; 600]].concat(),
    )
    .expect("write");
    let err = provision::provision(&xz, &file)
        .expect_err("xz")
        .to_string();
    assert!(err.contains("xz -dk"), "{err}");
}

#[test]
fn bootstrap_writes_a_valid_document_and_refuses_others() {
    let dir = tempfile::tempdir().expect("tempdir");
    let img = card(dir.path());
    let file = dir.path().join("bootstrap.json");
    let good = r#"{"generation": 0, "tasks": [{
        "taskArn": "arn:aws:ecs:eu-west-1:123456789012:task/edge/boot",
        "desiredStatus": "RUNNING",
        "taskDefinition": {"family": "boot", "containerDefinitions": [
            {"name": "main", "image": "busybox:latest", "memory": 32, "essential": true}]}}]}"#;
    for (text, want) in [
        (
            good.replace("\"generation\": 0", "\"generation\": 4"),
            "must be 0",
        ),
        (
            good.replace("\"memory\": 32,", "\"memory\": 32, \"secrets\": [{\"name\": \"k\", \"valueFrom\": \"arn:aws:ssm:::parameter/k\"}],"),
            "secrets",
        ),
        ("{".to_string(), "bootstrap.json"),
    ] {
        std::fs::write(&file, &text).expect("write");
        let err = bootstrap::bootstrap(&img, &file)
            .expect_err(want)
            .to_string();
        assert!(
            err.contains(want) && err.contains("bootstrap.json"),
            "{want}: {err}"
        );
        assert_eq!(
            mtype(&img, bootstrap::CARD_PATH),
            None,
            "{want}: written anyway"
        );
    }
    std::fs::write(&file, good).expect("write");
    assert_eq!(bootstrap::bootstrap(&img, &file).expect("bootstrap"), 1);
    assert_eq!(
        mtype(&img, bootstrap::CARD_PATH).as_deref(),
        Some(good.as_bytes())
    );
}

/// An OCI image-layout tar with one blob of `blob_len` bytes; sparse, so a big one
/// costs no disk.
fn oci_archive(path: &Path, blob_len: u64, gzip: bool) {
    let index = br#"{"schemaVersion":2,"manifests":[]}"#;
    let mut data = Vec::new();
    {
        let mut b = tar::Builder::new(&mut data);
        for (name, body) in [
            ("oci-layout", &br#"{"imageLayoutVersion":"1.0.0"}"#[..]),
            ("index.json", &index[..]),
        ] {
            let mut h = tar::Header::new_gnu();
            h.set_size(body.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, body).expect("append");
        }
        let mut h = tar::Header::new_gnu();
        h.set_size(blob_len);
        h.set_mode(0o644);
        h.set_path("blobs/sha256/00").expect("path");
        h.set_cksum();
        b.get_mut().extend_from_slice(h.as_bytes());
    }
    let mut f = File::create(path).expect("create");
    if gzip {
        let mut gz = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
        gz.write_all(&data).expect("gzip");
        gz.write_all(&vec![0u8; blob_len.next_multiple_of(512) as usize + 1024])
            .expect("gzip");
        gz.finish().expect("gzip");
    } else {
        f.write_all(&data).expect("write");
        // The blob's bytes and the two end blocks: zeros, left as a hole.
        f.set_len(data.len() as u64 + blob_len.next_multiple_of(512) + 1024)
            .expect("set_len");
    }
}

#[test]
fn preload_copies_archives_and_refuses_what_does_not_fit_or_is_not_oci() {
    let dir = tempfile::tempdir().expect("tempdir");
    let img = card(dir.path());
    let a = dir.path().join("nginx.tar");
    let b = dir.path().join("app-v1.tar.gz");
    oci_archive(&a, 10_000, false);
    oci_archive(&b, 5_000, true);

    let done = preload::preload(&img, &[a.clone(), b.clone()]).expect("preload");
    assert_eq!(done.len(), 2);
    for p in [&a, &b] {
        let name = p.file_name().and_then(|n| n.to_str()).expect("name");
        let back = mtype(&img, &format!("skerry/images/{name}")).expect("on the card");
        assert_eq!(back, std::fs::read(p).expect("read"), "{name}");
    }

    // Too big for the 256 MiB partition: refused up front, nothing copied.
    let big = dir.path().join("big.tar");
    oci_archive(&big, 300 << 20, false);
    let c = dir.path().join("small.tar");
    oci_archive(&c, 100, false);
    let err = preload::preload(&img, &[c.clone(), big])
        .expect_err("no room")
        .to_string();
    assert!(
        err.contains("bytes free") && err.contains("sdcard.img"),
        "{err}"
    );
    assert_eq!(mtype(&img, "skerry/images/small.tar"), None);

    // Not an OCI layout; a name FAT or the agent would trip on; two of one name.
    let plain = dir.path().join("plain.tar");
    {
        let mut bld = tar::Builder::new(File::create(&plain).expect("create"));
        let mut h = tar::Header::new_gnu();
        h.set_size(2);
        h.set_cksum();
        bld.append_data(&mut h, "index.json", &b"{}"[..])
            .expect("append");
        bld.finish().expect("finish");
    }
    let err = preload::preload(&img, &[plain])
        .expect_err("not oci")
        .to_string();
    assert!(
        err.contains("plain.tar") && err.contains("no oci-layout"),
        "{err}"
    );
    let odd = dir.path().join("my image.tar");
    std::fs::copy(&a, &odd).expect("copy");
    let err = preload::preload(&img, &[odd])
        .expect_err("name")
        .to_string();
    assert!(
        err.contains("my image.tar") && err.contains("letters, digits"),
        "{err}"
    );
    std::fs::create_dir(dir.path().join("other")).expect("mkdir");
    let twin = dir.path().join("other/NGINX.tar");
    std::fs::copy(&a, &twin).expect("copy");
    let err = preload::preload(&img, &[a.clone(), twin])
        .expect_err("twins")
        .to_string();
    assert!(err.contains("rename one"), "{err}");

    // Preloading one again replaces it, and its old space counts as free.
    oci_archive(&a, 20_000, false);
    preload::preload(&img, std::slice::from_ref(&a)).expect("again");
    assert_eq!(
        mtype(&img, "skerry/images/nginx.tar"),
        Some(std::fs::read(&a).expect("read"))
    );
}
