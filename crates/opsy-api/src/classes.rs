//! Cluster-scoped classes owned by the platform team — [`BuildClass`](crate::BuildClass) and
//! [`RefresherClass`](crate::RefresherClass) — and how a namespaced object finds its own: the
//! class it names, else the one marked default, else none (the install's limits alone).

use kube::ResourceExt;

/// Marks the class that objects naming none get (`"true"`).
pub const DEFAULT_CLASS_ANNOTATION: &str = "ami.refresh.ops/is-default-class";

/// Whether `list` (a class's list; `None`: left out) allows `name`.
pub fn lists(list: Option<&[String]>, name: &str) -> bool {
    list.is_none_or(|list| list.iter().any(|entry| entry == "*" || entry == name))
}

/// A class: which namespaces may use it.
pub trait Class: ResourceExt {
    /// The namespaces whose objects may use it, by name, or `*`.
    fn namespaces(&self) -> &[String];

    /// Whether it is marked the default class.
    fn is_default(&self) -> bool {
        self.annotations()
            .get(DEFAULT_CLASS_ANNOTATION)
            .is_some_and(|v| v == "true")
    }

    /// Whether objects of `namespace` may use it.
    fn admits(&self, namespace: &str) -> bool {
        lists(Some(self.namespaces()), namespace)
    }
}

/// Which kind of class, in the words its refusals use.
#[derive(Debug, Clone, Copy)]
pub struct ClassKind {
    /// `BuildClass`
    pub kind: &'static str,
    /// The field an object names its class in: `spec.buildClassName`.
    pub field: &'static str,
    /// The chart value that requires a class: `builds.requireClass`.
    pub require_value: &'static str,
}

/// The class an object whose spec names `named` uses, from every class of the cluster; `None`:
/// it names none and none is marked default (refused when `require` is set). Else why it may
/// not act, and how to fix that.
pub fn choose<'a, C: Class>(
    kind: ClassKind,
    classes: &'a [C],
    named: Option<&str>,
    require: bool,
) -> Result<Option<&'a C>, String> {
    let ClassKind {
        kind,
        field,
        require_value,
    } = kind;
    if let Some(name) = named {
        return classes
            .iter()
            .find(|c| c.name_any() == name)
            .map(Some)
            .ok_or_else(|| {
                format!(
                    "{kind} {name:?} ({field}) does not exist; name one the platform team made for this namespace (kubectl get {}es)",
                    kind.to_lowercase()
                )
            });
    }
    let defaults: Vec<&C> = classes.iter().filter(|c| c.is_default()).collect();
    match defaults.as_slice() {
        [class] => Ok(Some(class)),
        [] if require => Err(format!(
            "{field} is not set and no {kind} is marked {DEFAULT_CLASS_ANNOTATION}=\"true\"; this install requires one ({require_value}): name a {kind} in {field}"
        )),
        [] => Ok(None),
        several => Err(format!(
            "{field} is not set and {} {kind}es are marked {DEFAULT_CLASS_ANNOTATION}=\"true\" ({}): name one in {field}, or have the platform team mark only one",
            several.len(),
            several
                .iter()
                .map(|c| c.name_any())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// Why `class` (of kind `kind`) refuses `what`, named by the class's field `field`.
pub fn refusal(kind: &str, class: &str, what: &str, field: &str) -> String {
    format!(
        "{what} is not allowed by {kind} {class} (its spec.{field}); use a class that allows it or ask the platform team to add it"
    )
}
