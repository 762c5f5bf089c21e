//! Reading the platform team's cluster-scoped classes (BuildClass, RefresherClass).

use kube::{Api, Resource, api::ListParams};
use serde::de::DeserializeOwned;

/// Every class of kind `C` in the cluster; none when its CRD is not installed (an install
/// without that chart's CRDs has no classes, and its own limits apply).
pub async fn list<C>(client: &kube::Client) -> Result<Vec<C>, kube::Error>
where
    C: Resource<DynamicType = (), Scope = k8s_openapi::ClusterResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    match Api::<C>::all(client.clone())
        .list(&ListParams::default())
        .await
    {
        Ok(list) => Ok(list.items),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}
