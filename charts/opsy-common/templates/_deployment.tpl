{{/*
The operator Deployment. Call as: include "opsy-common.deployment" (dict "root" .)
*/}}
{{- define "opsy-common.deployment" -}}
{{- $root := .root -}}
{{- $values := $root.Values -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "opsy-common.fullname" $root }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "opsy-common.labels" $root | nindent 4 }}
spec:
  replicas: {{ $values.replicaCount }}
  revisionHistoryLimit: 3
  selector:
    matchLabels:
      {{- include "opsy-common.selectorLabels" $root | nindent 6 }}
  {{- if and (gt (int $values.replicaCount) 1) (not $values.leaderElection.enabled) }}
  {{- fail "replicaCount > 1 needs leaderElection.enabled: two replicas without a leader would both act" }}
  {{- end }}
  template:
    metadata:
      labels:
        {{- include "opsy-common.selectorLabels" $root | nindent 8 }}
        {{- with $values.podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- with $values.podAnnotations }}
      annotations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
    spec:
      serviceAccountName: {{ include "opsy-common.serviceAccountName" $root }}
      {{- with $values.priorityClassName }}
      priorityClassName: {{ . }}
      {{- end }}
      {{- with $values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      securityContext:
        {{- toYaml $values.podSecurityContext | nindent 8 }}
      terminationGracePeriodSeconds: {{ $values.terminationGracePeriodSeconds }}
      containers:
        - name: operator
          image: {{ include "opsy-common.image" $root | quote }}
          imagePullPolicy: {{ $values.image.pullPolicy }}
          args: ["run"]
          env:
            - name: POD_NAME
              valueFrom:
                fieldRef:
                  fieldPath: metadata.name
            - name: POD_NAMESPACE
              valueFrom:
                fieldRef:
                  fieldPath: metadata.namespace
            - name: OPSY_LEADER_ELECT
              value: {{ $values.leaderElection.enabled | quote }}
            - name: OPSY_METRICS_ADDR
              value: {{ printf "0.0.0.0:%v" $values.metrics.port | quote }}
            - name: OPSY_CONCURRENCY
              value: {{ $values.concurrency | quote }}
            - name: OPSY_LOG_FORMAT
              value: {{ $values.logFormat | quote }}
            - name: RUST_LOG
              value: {{ $values.logLevel | quote }}
            {{- with ($values.builds).allowedImages }}
            - name: OPSY_ALLOWED_BUILD_IMAGES
              value: {{ join "," . | quote }}
            {{- end }}
            {{- with ($values.builds).allowedRepositories }}
            - name: OPSY_ALLOWED_BUILD_REPOSITORIES
              value: {{ join "," . | quote }}
            {{- end }}
            {{- if or ($values.builds).requireClass ($values.rollouts).requireClass }}
            - name: OPSY_REQUIRE_CLASS
              value: "true"
            {{- end }}
            {{- if ($values.notifications).allowPrivateWebhooks }}
            - name: OPSY_ALLOW_PRIVATE_WEBHOOKS
              value: "true"
            {{- end }}
            {{- with $values.watchNamespaces }}
            - name: OPSY_WATCH_NAMESPACES
              value: {{ join "," . | quote }}
            {{- end }}
            {{- with $values.aws.region }}
            - name: AWS_REGION
              value: {{ . | quote }}
            {{- end }}
            {{- with $values.aws.endpointUrl }}
            - name: AWS_ENDPOINT_URL
              value: {{ . | quote }}
            {{- end }}
            {{- with $values.extraEnv }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          ports:
            - name: metrics
              containerPort: {{ $values.metrics.port }}
              protocol: TCP
          livenessProbe:
            httpGet:
              path: /livez
              port: metrics
            periodSeconds: 20
          readinessProbe:
            httpGet:
              path: /readyz
              port: metrics
            periodSeconds: 10
          resources:
            {{- toYaml $values.resources | nindent 12 }}
          securityContext:
            {{- toYaml $values.securityContext | nindent 12 }}
      {{- with $values.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $values.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $values.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
{{- end -}}
