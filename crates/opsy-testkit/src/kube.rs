//! A kubeconfig for a cluster that is not the testkit's control plane.

use std::path::Path;

/// Writes a kubeconfig at `path` whose only context talks to `server` (a URL) with a bearer
/// token, in namespace `opsy-system`.
pub fn write_kubeconfig(path: &Path, server: &str) -> std::io::Result<()> {
    std::fs::write(
        path,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: c\n\
             clusters: [{{name: c, cluster: {{server: '{server}'}}}}]\n\
             users: [{{name: u, user: {{token: t}}}}]\n\
             contexts: [{{name: c, context: {{cluster: c, user: u, namespace: opsy-system}}}}]\n"
        ),
    )
}
