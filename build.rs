//! Compiles the control-stream protos with protox (pure Rust, no protoc) and generates the
//! tonic client and server code; in release builds, lays out the binary's code by
//! `link/text-order.txt` (see link/README.md).

use std::path::Path;
use std::process::{Command, Stdio};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/envoy/service/discovery/v3/ads.proto",
        "proto/spoke/v1/identity.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    text_order();
    Ok(())
}

/// The functions a sidecar runs, placed next to each other at the start of the code: the
/// kernel maps a binary's code in 64 KiB windows around each page touched, so code used at
/// start-up and on the request path, spread over 15 MiB of text, keeps about half of it
/// resident. gold's `--section-ordering-file` places them (each function has its own
/// section); without gold, or for other profiles, the build is the usual one.
fn text_order() {
    const ORDER: &str = "link/text-order.txt";
    println!("cargo:rerun-if-changed={ORDER}");
    let release = std::env::var("PROFILE").is_ok_and(|p| p == "release");
    let linux = std::env::var("CARGO_CFG_TARGET_OS").is_ok_and(|os| os == "linux");
    if !release || !linux || !Path::new(ORDER).exists() {
        return;
    }
    let gold = Command::new("ld.gold")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !gold {
        println!("cargo:warning=ld.gold not found: the release binary's code is not ordered by {ORDER} (more of it stays resident)");
        return;
    }
    let Ok(dir) = std::env::var("CARGO_MANIFEST_DIR") else {
        return;
    };
    println!("cargo:rustc-link-arg-bin=spoke=-fuse-ld=gold");
    println!("cargo:rustc-link-arg-bin=spoke=-Wl,--section-ordering-file={dir}/{ORDER}");
}
