//! The CustomResourceDefinitions generated from the types, and their YAML form.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

use crate::{AMIRefresher, BuildClass, PackerBuilder, RefresherClass};

/// Which CRD.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `packerbuilders.ami.refresh.ops`
    PackerBuilder,
    /// `amirefreshers.ami.refresh.ops`
    AMIRefresher,
    /// `buildclasses.ami.refresh.ops` (cluster-scoped)
    BuildClass,
    /// `refresherclasses.ami.refresh.ops` (cluster-scoped)
    RefresherClass,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 4] = [
        Kind::PackerBuilder,
        Kind::AMIRefresher,
        Kind::BuildClass,
        Kind::RefresherClass,
    ];

    /// The generated CRD.
    pub fn crd(self) -> CustomResourceDefinition {
        match self {
            Kind::PackerBuilder => PackerBuilder::crd(),
            Kind::AMIRefresher => AMIRefresher::crd(),
            Kind::BuildClass => BuildClass::crd(),
            Kind::RefresherClass => RefresherClass::crd(),
        }
    }

    /// File name of the CRD under `deploy/crds/` (`<group>_<plural>.yaml`).
    pub fn file_name(self) -> String {
        format!("{}_{}.yaml", crate::GROUP, self.plural())
    }

    fn plural(self) -> &'static str {
        match self {
            Kind::PackerBuilder => "packerbuilders",
            Kind::AMIRefresher => "amirefreshers",
            Kind::BuildClass => "buildclasses",
            Kind::RefresherClass => "refresherclasses",
        }
    }

    /// The CRD as YAML, with a header saying it is generated.
    pub fn yaml(self) -> Result<String, serde_saphyr::ser_error::Error> {
        let body = serde_saphyr::to_string(&self.crd())?;
        Ok(format!(
            "# Generated from crates/opsy-api by `cargo xtask crds`; do not edit.\n---\n{body}"
        ))
    }
}
