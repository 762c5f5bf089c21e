//! Which Packer commands a build runs, with which arguments.
//!
//! Every build runs `init`, `validate` and `build`, in that order; a command given in the spec
//! replaces the default of its kind, and missing ones run in the build's working directory.
//! Arguments are passed to Packer as separate argv entries — never through a shell.

use std::path::{Component, Path, PathBuf};

use opsy_api::{
    lanes::Architecture,
    packer_builder::{Builder, Command, OnError, SubCommand},
};

/// Where git-sync puts the repository inside the build pod.
pub const REPO_ROOT: &str = "/workspace/repo";

/// Variables injected when the base AMI comes from filters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseVars {
    /// The base AMI (`-var ami_id=…`).
    pub ami_id: String,
    /// The region (`-var region=…`).
    pub region: String,
}

/// One Packer invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// `init`, `validate` or `build`.
    pub sub_command: SubCommand,
    /// Arguments after `packer` (the sub-command first).
    pub args: Vec<String>,
    /// Absolute working directory inside the pod.
    pub working_dir: String,
    /// Run with `PACKER_LOG=1`.
    pub debug: bool,
}

impl Step {
    /// The container name of this step.
    pub fn container_name(&self) -> &'static str {
        match self.sub_command {
            SubCommand::Init => "packer-init",
            SubCommand::Validate => "packer-validate",
            SubCommand::Build => "packer-build",
        }
    }
}

/// The steps of a build; for one `architecture` (`spec.architectures`), Packer gets
/// `-var architecture=<arch>`.
pub fn plan(
    builder: &Builder,
    base: Option<&BaseVars>,
    architecture: Option<Architecture>,
) -> Vec<Step> {
    let find = |kind: SubCommand| builder.commands.iter().find(|c| c.sub_command == kind);
    // Commands the spec leaves out run where the build runs.
    let build_dir = find(SubCommand::Build).and_then(|c| c.working_dir.as_deref());
    [SubCommand::Init, SubCommand::Validate, SubCommand::Build]
        .into_iter()
        .map(|kind| {
            let default = Command {
                sub_command: kind,
                args: Vec::new(),
                color: false,
                debug: false,
                on_error: None,
                variables: Default::default(),
                variables_file: None,
                working_dir: build_dir.map(str::to_owned),
            };
            let command = find(kind).cloned().unwrap_or(default);
            step(builder, &command, base, architecture)
        })
        .collect()
}

fn step(
    builder: &Builder,
    command: &Command,
    base: Option<&BaseVars>,
    architecture: Option<Architecture>,
) -> Step {
    let mut args = vec![name(command.sub_command).to_owned()];
    if command.sub_command == SubCommand::Build {
        // Machine-readable output carries the `artifact` lines the AMI id is read from.
        args.push("-machine-readable".to_owned());
        if !command.color {
            args.push("-color=false".to_owned());
        }
        if let Some(on_error) = command.on_error {
            args.push(format!("-on-error={}", on_error_flag(on_error)));
        }
    }
    if command.sub_command != SubCommand::Init {
        if let Some(base) = base {
            args.push("-var".to_owned());
            args.push(format!("ami_id={}", base.ami_id));
            args.push("-var".to_owned());
            args.push(format!("region={}", base.region));
        }
        if let Some(architecture) = architecture {
            args.push("-var".to_owned());
            args.push(format!("architecture={architecture}"));
        }
        for (key, value) in &command.variables {
            // The base AMI found by the operator wins over a fixed value in the spec, and so
            // does the architecture it builds for.
            if base.is_some() && (key == "ami_id" || key == "region") {
                continue;
            }
            if architecture.is_some() && key == "architecture" {
                continue;
            }
            args.push("-var".to_owned());
            args.push(format!("{key}={value}"));
        }
        if let Some(file) = &command.variables_file {
            args.push(format!("-var-file={file}"));
        }
    }
    args.extend(command.args.iter().cloned());
    args.push(".".to_owned());
    Step {
        sub_command: command.sub_command,
        args,
        working_dir: working_dir(&builder.dir, command.working_dir.as_deref()),
        debug: command.debug,
    }
}

fn name(kind: SubCommand) -> &'static str {
    match kind {
        SubCommand::Init => "init",
        SubCommand::Validate => "validate",
        SubCommand::Build => "build",
    }
}

fn on_error_flag(on_error: OnError) -> &'static str {
    match on_error {
        OnError::Cleanup => "cleanup",
        OnError::Abort => "abort",
        OnError::RunCleanupProvisioner => "run-cleanup-provisioner",
    }
}

/// `/workspace/repo/<dir>/<working_dir>`, with `.` segments removed. `..` segments and absolute
/// paths are rejected by the CRD; here they are dropped, so a path can never leave the
/// repository even if the schema was bypassed.
fn working_dir(dir: &str, sub: Option<&str>) -> String {
    let mut path = PathBuf::from(REPO_ROOT);
    for part in [Some(dir), sub].into_iter().flatten() {
        for component in Path::new(part).components() {
            if let Component::Normal(c) = component {
                path.push(c);
            }
        }
    }
    path.to_string_lossy().into_owned()
}

/// The steps as one human-readable line for `status.command` (display only: nothing runs it).
pub fn display(steps: &[Step]) -> String {
    steps
        .iter()
        .map(|s| {
            let args: Vec<String> = s.args.iter().map(|a| quote(a)).collect();
            format!("packer {}", args.join(" "))
        })
        .collect::<Vec<_>>()
        .join(" && ")
}

fn quote(arg: &str) -> String {
    let plain = arg
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_=./:@,+".contains(c));
    if plain && !arg.is_empty() {
        arg.to_owned()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn builder(commands: Vec<Command>) -> Builder {
        serde_json::from_value::<Builder>(serde_json::json!({
            "repoURL": "https://github.com/example-org/images",
            "dir": "packer/generic-fips",
        }))
        .map(|mut b| {
            b.commands = commands;
            b
        })
        .unwrap()
    }

    fn command(kind: SubCommand) -> Command {
        Command {
            sub_command: kind,
            args: vec![],
            color: false,
            debug: false,
            on_error: None,
            variables: BTreeMap::new(),
            variables_file: None,
            working_dir: None,
        }
    }

    fn base() -> BaseVars {
        BaseVars {
            ami_id: "ami-05da30e98c637628c".into(),
            region: "us-west-2".into(),
        }
    }

    #[test]
    fn defaults_run_init_validate_build_in_the_project_dir() {
        let steps = plan(&builder(vec![]), None, None);
        assert_eq!(
            display(&steps),
            "packer init . && packer validate . && packer build -machine-readable -color=false ."
        );
        assert!(
            steps
                .iter()
                .all(|s| s.working_dir == "/workspace/repo/packer/generic-fips")
        );
    }

    #[test]
    fn the_upstream_build_only_command() {
        let mut build = command(SubCommand::Build);
        build.args = vec!["-force".into()];
        build.debug = true;
        build.on_error = Some(OnError::Cleanup);
        build.working_dir = Some("al2023".into());
        let steps = plan(&builder(vec![build]), Some(&base()), None);
        assert_eq!(
            display(&steps),
            "packer init . && \
             packer validate -var ami_id=ami-05da30e98c637628c -var region=us-west-2 . && \
             packer build -machine-readable -color=false -on-error=cleanup -var ami_id=ami-05da30e98c637628c \
             -var region=us-west-2 -force ."
        );
        // init and validate run in the build's working directory.
        assert!(
            steps
                .iter()
                .all(|s| s.working_dir == "/workspace/repo/packer/generic-fips/al2023")
        );
        assert!(steps[2].debug && !steps[0].debug);
    }

    #[test]
    fn variables_are_sorted_and_the_base_ami_wins() {
        let mut validate = command(SubCommand::Validate);
        validate.variables = BTreeMap::from([
            ("zone".to_owned(), "a".to_owned()),
            ("ami_id".to_owned(), "ami-fixed".to_owned()),
            ("eks_version".to_owned(), "1.30".to_owned()),
        ]);
        validate.variables_file = Some("vars/prod.pkrvars.hcl".into());
        let steps = plan(&builder(vec![validate.clone()]), Some(&base()), None);
        assert_eq!(
            steps[1].args,
            [
                "validate",
                "-var",
                "ami_id=ami-05da30e98c637628c",
                "-var",
                "region=us-west-2",
                "-var",
                "eks_version=1.30",
                "-var",
                "zone=a",
                "-var-file=vars/prod.pkrvars.hcl",
                "."
            ]
        );
        // Without filters the spec's own ami_id is passed.
        let steps = plan(&builder(vec![validate]), None, None);
        assert!(steps[1].args.contains(&"ami_id=ami-fixed".to_owned()));
    }

    #[test]
    fn one_architecture_is_a_variable_that_wins_over_the_spec() {
        let mut build = command(SubCommand::Build);
        build.variables = BTreeMap::from([("architecture".to_owned(), "x86_64".to_owned())]);
        let steps = plan(
            &builder(vec![build]),
            Some(&base()),
            Some(Architecture::Arm64),
        );
        let args = &steps[2].args;
        assert!(
            args.windows(2)
                .any(|w| w[0] == "-var" && w[1] == "architecture=arm64"),
            "{args:?}"
        );
        assert!(
            !args.contains(&"architecture=x86_64".to_owned()),
            "{args:?}"
        );
        // init takes no variables.
        assert!(!steps[0].args.iter().any(|a| a.starts_with("architecture=")));
    }

    #[test]
    fn hostile_values_stay_single_literal_arguments() {
        let mut build = command(SubCommand::Build);
        build.args = vec!["-var=x=$(touch /pwned)".into(), "; rm -rf /".into()];
        build.variables = BTreeMap::from([("name".to_owned(), "a'b\"c`d`".to_owned())]);
        build.working_dir = Some("../../etc".into());
        let steps = plan(&builder(vec![build]), None, None);
        let args = &steps[2].args;
        assert!(args.contains(&"-var=x=$(touch /pwned)".to_owned()));
        assert!(args.contains(&"; rm -rf /".to_owned()));
        assert!(args.contains(&"name=a'b\"c`d`".to_owned()));
        assert_eq!(
            steps[2].working_dir, "/workspace/repo/packer/generic-fips/etc",
            "no escape from the repo"
        );
        assert!(display(&steps).contains("'; rm -rf /'"));
    }
}
