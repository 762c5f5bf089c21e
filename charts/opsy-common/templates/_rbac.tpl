{{/*
RBAC. Cluster-wide (the default, watchNamespaces empty): a ClusterRole with the rules the
operator chart passes in (its custom resources, the Secrets its notifiers and builds read,
Events), bound to the ServiceAccount. Namespaced (watchNamespaces set): those rules as a Role
and RoleBinding in each listed namespace only, and a ClusterRole left with the one
cluster-scoped read (its CRD). Both: a Role in the release namespace for the leader Lease.
Call as: include "opsy-common.rbac" (dict "root" . "rules" $rules "crd" <name>), plus
"clusterRules" for rules on cluster-scoped resources (always in the ClusterRole).
*/}}
{{- define "opsy-common.namespacedRules" -}}
{{ .rules }}
# Notifier tokens, webhook URLs and build credentials, read by name; never listed.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
# One Event per state transition.
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end -}}
{{- define "opsy-common.rbac" -}}
{{- $root := .root -}}
{{- $namespaces := $root.Values.watchNamespaces | default list -}}
{{- if $root.Values.rbac.create }}
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: {{ include "opsy-common.fullname" $root }}
  labels:
    {{- include "opsy-common.labels" $root | nindent 4 }}
rules:
  {{- if not $namespaces }}
  {{- include "opsy-common.namespacedRules" . | nindent 2 }}
  {{- end }}
  {{- with .clusterRules }}
  {{- . | nindent 2 }}
  {{- end }}
  # Wait at start until the CRD is established.
  - apiGroups: ["apiextensions.k8s.io"]
    resources: ["customresourcedefinitions"]
    resourceNames: [{{ .crd | quote }}]
    verbs: ["get"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: {{ include "opsy-common.fullname" $root }}
  labels:
    {{- include "opsy-common.labels" $root | nindent 4 }}
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: {{ include "opsy-common.fullname" $root }}
subjects:
  - kind: ServiceAccount
    name: {{ include "opsy-common.serviceAccountName" $root }}
    namespace: {{ $root.Release.Namespace }}
{{- range $namespaces }}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: {{ include "opsy-common.fullname" $root }}
  namespace: {{ . }}
  labels:
    {{- include "opsy-common.labels" $root | nindent 4 }}
rules:
  {{- include "opsy-common.namespacedRules" $ | nindent 2 }}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: {{ include "opsy-common.fullname" $root }}
  namespace: {{ . }}
  labels:
    {{- include "opsy-common.labels" $root | nindent 4 }}
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: Role
  name: {{ include "opsy-common.fullname" $root }}
subjects:
  - kind: ServiceAccount
    name: {{ include "opsy-common.serviceAccountName" $root }}
    namespace: {{ $root.Release.Namespace }}
{{- end }}
{{- if $root.Values.leaderElection.enabled }}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: {{ include "opsy-common.fullname" $root }}-leader-election
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "opsy-common.labels" $root | nindent 4 }}
rules:
  - apiGroups: ["coordination.k8s.io"]
    resources: ["leases"]
    verbs: ["get", "create", "patch"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: {{ include "opsy-common.fullname" $root }}-leader-election
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "opsy-common.labels" $root | nindent 4 }}
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: Role
  name: {{ include "opsy-common.fullname" $root }}-leader-election
subjects:
  - kind: ServiceAccount
    name: {{ include "opsy-common.serviceAccountName" $root }}
    namespace: {{ $root.Release.Namespace }}
{{- end }}
{{- end }}
{{- end -}}
