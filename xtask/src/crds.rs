//! `cargo xtask crds`: write (or check) the generated CRD YAML, in `deploy/crds/` and as the
//! CRD template of each operator's Helm chart.

use std::{fs, path::Path};

use anyhow::{Context, bail};
use opsy_api::crd::Kind;

/// Directories that receive a copy of every CRD.
const CRD_DIRS: &[&str] = &["deploy/crds"];

/// The chart that installs each kind's CRD.
fn chart(kind: Kind) -> &'static str {
    match kind {
        Kind::PackerBuilder | Kind::BuildClass => "packer-builder-operator",
        Kind::AMIRefresher | Kind::RefresherClass => "ami-refresh-operator",
    }
}

/// The chart template of each kind's CRD: `crd.yaml` for the kind the chart's operator
/// reconciles, `crd-<plural>.yaml` for the others it installs.
fn template_name(kind: Kind) -> String {
    match kind {
        Kind::PackerBuilder | Kind::AMIRefresher => "crd.yaml".to_owned(),
        Kind::BuildClass => "crd-buildclasses.yaml".to_owned(),
        Kind::RefresherClass => "crd-refresherclasses.yaml".to_owned(),
    }
}

pub fn run(root: &Path, check: bool) -> anyhow::Result<()> {
    let mut wanted = Vec::new();
    for kind in Kind::ALL {
        let yaml = kind
            .yaml()
            .with_context(|| format!("serialising {kind:?}"))?;
        for dir in CRD_DIRS {
            wanted.push((root.join(dir).join(kind.file_name()), yaml.clone()));
        }
        let template = chart_template(kind, &yaml)?;
        let path = root
            .join("charts")
            .join(chart(kind))
            .join("templates")
            .join(template_name(kind));
        wanted.push((path, template));
    }
    let mut stale = Vec::new();
    for (path, text) in wanted {
        if fs::read_to_string(&path).is_ok_and(|current| current == text) {
            continue;
        }
        if check {
            stale.push(path.display().to_string());
            continue;
        }
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    if !stale.is_empty() {
        bail!(
            "generated CRDs differ from the committed ones: {}; run `cargo xtask crds`",
            stale.join(", ")
        );
    }
    Ok(())
}

/// The CRD as a chart template: installed when `crds.install`, kept on uninstall when
/// `crds.keep`, labelled like the chart's other objects.
fn chart_template(kind: Kind, yaml: &str) -> anyhow::Result<String> {
    let name = kind.crd().metadata.name.unwrap_or_default();
    let name_line = format!("  name: {name}\n");
    let (_, body) = yaml
        .split_once("---\n")
        .context("the CRD YAML has no document marker")?;
    if !body.contains(&name_line) {
        bail!("the CRD YAML of {name} has no `{}`", name_line.trim());
    }
    let metadata = format!(
        "{name_line}  {{{{- if .Values.crds.keep }}}}\n  annotations:\n    helm.sh/resource-policy: keep\n  \
         {{{{- end }}}}\n  labels:\n    {{{{- include \"opsy-common.labels\" . | nindent 4 }}}}\n"
    );
    Ok(format!(
        "{{{{- /* Generated from crates/opsy-api by `cargo xtask crds`; do not edit. */ -}}}}\n\
         {{{{- if .Values.crds.install }}}}\n{}{{{{- end }}}}\n",
        body.replacen(&name_line, &metadata, 1)
    ))
}
