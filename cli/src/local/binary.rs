//! Finding the mesh's own binaries (`mesh-proxy`, `mesh-init`, `mesh-controller`, `mesh-demo-app`) next to the running executable, built fresh under cargo.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use anyhow::{anyhow, bail, Context as _};

/// Overrides where the binaries are looked for (and turns off the build under cargo).
const BIN_DIR_ENV: &str = "MESH_BIN_DIR";

/// The path of the mesh binary `name` (`mesh-proxy`, `mesh-init`, `mesh-controller`,
/// `mesh-demo-app`).
///
/// Looks in `$MESH_BIN_DIR` when set; otherwise next to the running executable (for a test,
/// `target/<profile>/`, the parent of its `deps/`). When this process runs under cargo (`CARGO`
/// is set, as in `cargo test`), it first builds the binaries once per process with
/// `$CARGO build -p mesh-proxy -p mesh-controller -p mesh-demo-app -p mesh-cli --bins` in the same
/// profile, so they are never stale (`scripts/test` runs the same command first).
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let dir = match std::env::var_os(BIN_DIR_ENV) {
        Some(dir) => PathBuf::from(dir),
        None => {
            let dir = exe_dir()?;
            if let Some(cargo) = std::env::var_os("CARGO") {
                build_once(cargo, &dir)?;
            }
            dir
        }
    };
    let path = dir.join(name);
    if !path.is_file() {
        bail!(
            "mesh binary {name} not found at {}: run `cargo build --workspace --bins` first, \
             or set {BIN_DIR_ENV} to the folder that holds it",
            path.display()
        );
    }
    Ok(path)
}

/// `target/<profile>/` for an executable in it or in its `deps/`.
fn exe_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the running executable")?;
    let mut dir = exe
        .parent()
        .ok_or_else(|| anyhow!("the running executable {} has no folder", exe.display()))?
        .to_path_buf();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    Ok(dir)
}

/// Builds the binaries once per process; later calls return the first outcome.
fn build_once(cargo: OsString, profile_dir: &Path) -> anyhow::Result<()> {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    BUILT
        .get_or_init(|| build(&cargo, profile_dir).map_err(|err| format!("{err:#}")))
        .clone()
        .map_err(|err| anyhow!(err))
}

/// The packages whose binaries [`binary`] builds (`scripts/test` builds the same first).
const PACKAGES: [&str; 4] = ["mesh-proxy", "mesh-controller", "mesh-demo-app", "mesh-cli"];

fn build(cargo: &OsString, profile_dir: &Path) -> anyhow::Result<()> {
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--quiet", "--bins"]);
    for package in PACKAGES {
        cmd.args(["-p", package]);
    }
    // The profile folder is named after the profile, except `dev` (and `test`) build into `debug`.
    match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => {}
        Some("release") => {
            cmd.arg("--release");
        }
        Some(other) => {
            cmd.args(["--profile", other]);
        }
    }
    // Build into the folder the executable came from: `<target-dir>/[<triple>/]<profile>/`.
    // Cargo marks the root of a target dir with `CACHEDIR.TAG`.
    if let Some(parent) = profile_dir.parent() {
        if parent.join("CACHEDIR.TAG").is_file() {
            cmd.arg("--target-dir").arg(parent);
        } else if let (Some(root), Some(triple)) = (parent.parent(), parent.file_name()) {
            cmd.arg("--target-dir")
                .arg(root)
                .arg("--target")
                .arg(triple);
        }
    }
    if let Some(dir) = std::env::var_os("CARGO_MANIFEST_DIR") {
        cmd.current_dir(dir);
    }
    let line = format!("cargo build -p {} --bins", PACKAGES.join(" -p "));
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running `{line}`"))?;
    if !output.status.success() {
        bail!(
            "`{line}` failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}
