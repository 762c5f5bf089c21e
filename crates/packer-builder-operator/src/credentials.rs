//! The Secrets a build uses, checked before its Job starts: a missing Secret or key is a
//! condition and an Event that name it, not a pod stuck in `CreateContainerConfigError` or an
//! anonymous clone that fails minutes later.
//!
//! git credentials follow git-sync: for an `https://` repository, keys `username` and `token`
//! (or `password`) become `GITSYNC_USERNAME` / `GITSYNC_PASSWORD`; for an SSH repository
//! (`ssh://…`, `git@…`), keys `ssh` (the private key) and `known_hosts` are mounted as files
//! and named by `GITSYNC_SSH_KEY_FILE` / `GITSYNC_SSH_KNOWN_HOSTS_FILE`. Host keys are always
//! verified.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use opsy_api::PackerBuilderSpec;

/// How git-sync authenticates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GitAuth {
    /// A public repository.
    Anonymous,
    /// HTTPS: `username` and the key holding the password or token.
    Https {
        /// `token` or `password`.
        password_key: &'static str,
    },
    /// SSH: the `ssh` and `known_hosts` keys, mounted as files.
    Ssh,
}

/// Whether `repo_url` is cloned over SSH.
pub fn is_ssh(repo_url: &str) -> bool {
    repo_url.starts_with("ssh://") || repo_url.starts_with("git@")
}

/// The keys of a Secret, or `None` when it does not exist.
pub type Keys = Option<BTreeSet<String>>;

/// How git-sync authenticates for `spec`, given the keys of `spec.gitSync.secret`; or what is
/// missing, in words that name the field, the Secret, the key and the fix.
pub fn git_auth(spec: &PackerBuilderSpec, namespace: &str, keys: &Keys) -> Result<GitAuth, String> {
    let ssh = is_ssh(&spec.builder.repo_url);
    let Some(name) = spec.git_sync.secret.as_deref() else {
        return if ssh {
            Err("spec.builder.repoURL is an SSH URL but spec.gitSync.secret is not set: name a Secret with keys ssh (the private key) and known_hosts (e.g. from ssh-keyscan <host>)".to_owned())
        } else {
            Ok(GitAuth::Anonymous)
        };
    };
    let Some(keys) = keys else {
        let wanted = if ssh {
            "ssh and known_hosts"
        } else {
            "username and token (or password)"
        };
        return Err(format!(
            "Secret {name:?} (spec.gitSync.secret) does not exist in namespace {namespace}; create it with keys {wanted}"
        ));
    };
    let missing = |key: &str, why: &str| {
        format!("Secret {name:?} (spec.gitSync.secret) has no key {key}; {why}")
    };
    if ssh {
        for key in ["ssh", "known_hosts"] {
            if !keys.contains(key) {
                return Err(missing(
                    key,
                    "an SSH repoURL needs ssh (the private key) and known_hosts (e.g. from ssh-keyscan <host>, so the host is verified)",
                ));
            }
        }
        return Ok(GitAuth::Ssh);
    }
    if !keys.contains("username") {
        return Err(missing(
            "username",
            "an https:// repoURL needs username and token (or password)",
        ));
    }
    let password_key = if keys.contains("token") {
        "token"
    } else if keys.contains("password") {
        "password"
    } else {
        return Err(missing(
            "token or password",
            "an https:// repoURL needs username and token (or password)",
        ));
    };
    Ok(GitAuth::Https { password_key })
}

/// `spec.builder.secret` (the Packer container's environment) exists, if it is set.
pub fn builder_secret(
    spec: &PackerBuilderSpec,
    namespace: &str,
    keys: &Keys,
) -> Result<(), String> {
    match (&spec.builder.secret, keys) {
        (Some(name), None) => Err(format!(
            "Secret {name:?} (spec.builder.secret) does not exist in namespace {namespace}; create it with the environment Packer needs (e.g. AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY), or remove the field when the Job's service account grants AWS access"
        )),
        _ => Ok(()),
    }
}

/// Each secret Packer variable's Secret exists and has its key (`keys_of(name)` gives the keys
/// of Secret `name`).
pub fn secret_variables<'a>(
    spec: &PackerBuilderSpec,
    namespace: &str,
    keys_of: impl Fn(&str) -> &'a Keys,
) -> Result<(), String> {
    for (i, variable) in spec.builder.secret_variables.iter().enumerate() {
        let name = &variable.secret;
        match keys_of(name) {
            None => {
                return Err(format!(
                    "Secret {name:?} (spec.builder.secretVariables[{i}], variable {}) does not exist in namespace {namespace}",
                    variable.name
                ));
            }
            Some(keys) if !keys.contains(&variable.key) => {
                return Err(format!(
                    "Secret {name:?} (spec.builder.secretVariables[{i}], variable {}) has no key {}",
                    variable.name, variable.key
                ));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Reads the key names (never the values) of Secret `name`.
async fn keys(secrets: &Api<Secret>, name: Option<&str>) -> Result<Keys, kube::Error> {
    let Some(name) = name else {
        return Ok(None);
    };
    Ok(secrets.get_opt(name).await?.map(|secret| {
        secret
            .data
            .unwrap_or_default()
            .into_keys()
            .chain(secret.string_data.unwrap_or_default().into_keys())
            .collect()
    }))
}

/// Checks the Secrets `spec` names in `namespace`: how git-sync authenticates, or what is
/// missing (outer error: the API call failed).
pub async fn check(
    secrets: &Api<Secret>,
    spec: &PackerBuilderSpec,
    namespace: &str,
) -> Result<Result<GitAuth, String>, kube::Error> {
    let git = keys(secrets, spec.git_sync.secret.as_deref()).await?;
    let builder = keys(secrets, spec.builder.secret.as_deref()).await?;
    let mut variables = std::collections::BTreeMap::new();
    for variable in &spec.builder.secret_variables {
        if !variables.contains_key(&variable.secret) {
            let found = keys(secrets, Some(&variable.secret)).await?;
            variables.insert(variable.secret.clone(), found);
        }
    }
    let none: Keys = None;
    Ok(builder_secret(spec, namespace, &builder)
        .and_then(|()| {
            secret_variables(spec, namespace, |name| variables.get(name).unwrap_or(&none))
        })
        .and_then(|()| git_auth(spec, namespace, &git)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(repo: &str, git_secret: Option<&str>) -> PackerBuilderSpec {
        let mut builder = serde_json::json!({"repoURL": repo});
        let mut spec = serde_json::json!({"region": "us-west-2", "clusterName": "c"});
        if let Some(s) = git_secret {
            spec["gitSync"] = serde_json::json!({"secret": s});
            builder["secret"] = serde_json::json!("aws-creds");
        }
        spec["builder"] = builder;
        serde_json::from_value(spec).unwrap()
    }

    fn keys(names: &[&str]) -> Keys {
        Some(names.iter().map(|k| (*k).to_owned()).collect())
    }

    #[test]
    fn https_takes_username_and_token_or_password() {
        let s = spec("https://git.example/x", Some("git"));
        assert_eq!(
            git_auth(&s, "ns", &keys(&["username", "token"])),
            Ok(GitAuth::Https {
                password_key: "token"
            })
        );
        assert_eq!(
            git_auth(&s, "ns", &keys(&["username", "password"])),
            Ok(GitAuth::Https {
                password_key: "password"
            })
        );
        let err = git_auth(&s, "ns", &keys(&["token"])).unwrap_err();
        assert!(
            err.contains("Secret \"git\" (spec.gitSync.secret) has no key username"),
            "{err}"
        );
        let err = git_auth(&s, "ns", &keys(&["username"])).unwrap_err();
        assert!(err.contains("has no key token or password"), "{err}");
        let err = git_auth(&s, "ns", &None).unwrap_err();
        assert!(
            err.contains("does not exist in namespace ns; create it with keys username and token"),
            "{err}"
        );
        let public = spec("https://git.example/x", None);
        assert_eq!(git_auth(&public, "ns", &None), Ok(GitAuth::Anonymous));
    }

    #[test]
    fn ssh_takes_a_key_and_known_hosts() {
        for url in ["git@github.com:org/repo.git", "ssh://git@git.example/x"] {
            let s = spec(url, Some("git"));
            assert_eq!(
                git_auth(&s, "ns", &keys(&["ssh", "known_hosts"])),
                Ok(GitAuth::Ssh)
            );
            let err = git_auth(&s, "ns", &keys(&["ssh"])).unwrap_err();
            assert!(err.contains("has no key known_hosts"), "{err}");
            let err = git_auth(&spec(url, None), "ns", &None).unwrap_err();
            assert!(err.contains("spec.gitSync.secret is not set"), "{err}");
        }
    }

    #[test]
    fn a_missing_builder_secret_is_named() {
        let s = spec("https://git.example/x", Some("git"));
        let err = builder_secret(&s, "ns", &None).unwrap_err();
        assert!(
            err.contains(
                "Secret \"aws-creds\" (spec.builder.secret) does not exist in namespace ns"
            ),
            "{err}"
        );
        assert_eq!(builder_secret(&s, "ns", &keys(&[])), Ok(()));
    }
}
