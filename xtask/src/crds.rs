//! `cargo xtask crds`: write (or check) the generated CRD YAML.

use std::{fs, path::Path};

use anyhow::{Context, bail};
use opsy_api::crd::Kind;

/// Directories that receive a copy of every CRD.
const CRD_DIRS: &[&str] = &["deploy/crds"];

pub fn run(root: &Path, check: bool) -> anyhow::Result<()> {
    let mut stale = Vec::new();
    for dir in CRD_DIRS {
        let dir = root.join(dir);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        for kind in Kind::ALL {
            let path = dir.join(kind.file_name());
            let yaml = kind
                .yaml()
                .with_context(|| format!("serialising {kind:?}"))?;
            let current = fs::read_to_string(&path).unwrap_or_default();
            if current == yaml {
                continue;
            }
            if check {
                stale.push(path.display().to_string());
            } else {
                fs::write(&path, yaml).with_context(|| format!("writing {}", path.display()))?;
                eprintln!("wrote {}", path.display());
            }
        }
    }
    if !stale.is_empty() {
        bail!(
            "generated CRDs differ from the committed ones: {}; run `cargo xtask crds`",
            stale.join(", ")
        );
    }
    Ok(())
}
