{{/*
RBAC: a ClusterRole with the rules the operator chart passes in (its custom resources, the
Secrets its notifiers read, Events), bound to the ServiceAccount; and a Role in the release
namespace for the leader-election Lease.
Call as: include "opsy-common.rbac" (dict "root" . "rules" $rules)
*/}}
{{- define "opsy-common.rbac" -}}
{{- $root := .root -}}
{{- if $root.Values.rbac.create }}
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: {{ include "opsy-common.fullname" $root }}
  labels:
    {{- include "opsy-common.labels" $root | nindent 4 }}
rules:
  {{- .rules | nindent 2 }}
  # Wait at start until the CRD is established.
  - apiGroups: ["apiextensions.k8s.io"]
    resources: ["customresourcedefinitions"]
    resourceNames: [{{ .crd | quote }}]
    verbs: ["get"]
  # Notifier tokens and webhook URLs (notifier.*.secret), read by name; never listed.
  - apiGroups: [""]
    resources: ["secrets"]
    verbs: ["get"]
  # One Event per state transition.
  - apiGroups: ["events.k8s.io"]
    resources: ["events"]
    verbs: ["create", "patch"]
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
