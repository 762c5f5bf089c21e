//! `promtool` (Prometheus' rule checker) for the charts' alert tests: taken from Debian's
//! `prometheus` package — downloaded with `apt-get download` and unpacked with `dpkg-deb`, so
//! nothing is installed system-wide and no service starts — into the cache beside the control
//! plane; `target/promtool` points at it.

use std::{fs, path::Path, process::Command};

use anyhow::{Context, bail};

use crate::run;

/// The Debian package that ships `promtool`.
const PACKAGE: &str = "prometheus";

/// Makes sure `target/promtool` runs; fetches it once per machine.
pub fn setup(root: &Path) -> anyhow::Result<()> {
    let dir = crate::control_plane::cache_base()?.join("promtool");
    let binary = dir.join("promtool");
    if !binary.exists() {
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let work = tempfile::tempdir().context("a temporary directory for the package")?;
        let download = || {
            run(Command::new("apt-get")
                .args(["download", PACKAGE])
                .current_dir(work.path()))
        };
        if download().is_err() {
            // A machine whose package lists were never fetched.
            run(Command::new("apt-get").args(["update", "-qq"]))?;
            download()?;
        }
        let deb = fs::read_dir(work.path())?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "deb"))
            .context("apt-get download left no .deb")?;
        let unpacked = work.path().join("unpacked");
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked))?;
        fs::copy(unpacked.join("usr/bin/promtool"), &binary)
            .with_context(|| format!("copying promtool to {}", binary.display()))?;
    }
    let out = Command::new(&binary).arg("--version").output();
    match out {
        Ok(o) if o.status.success() => {
            let version = String::from_utf8_lossy(&o.stdout);
            eprintln!(
                "setup: {}",
                version.lines().next().unwrap_or("promtool").trim()
            );
        }
        _ => bail!("{} does not run", binary.display()),
    }
    let link = root.join("target").join("promtool");
    if fs::read_link(&link).is_ok_and(|current| current == binary) {
        return Ok(());
    }
    fs::create_dir_all(root.join("target"))?;
    if fs::symlink_metadata(&link).is_ok() {
        fs::remove_file(&link).with_context(|| format!("removing {}", link.display()))?;
    }
    std::os::unix::fs::symlink(&binary, &link)
        .with_context(|| format!("linking {}", link.display()))?;
    Ok(())
}
