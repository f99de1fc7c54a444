{{/* Chart name, truncated to the 63 characters a label value may hold. */}}
{{- define "jouletune.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: every object name starts with it. It always contains the release name (unless
fullnameOverride is set), so two releases never render the same name, namespaced or not.
*/}}
{{- define "jouletune.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Name of cluster-scoped objects (ClusterRoles, ClusterRoleBindings): the full name plus the
release namespace, because Helm lets two releases of one name live in two namespaces.
*/}}
{{- define "jouletune.clusterName" -}}
{{- printf "%s-%s" (include "jouletune.fullname" .) .Release.Namespace }}
{{- end }}

{{- define "jouletune.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "jouletune.selectorLabels" -}}
app.kubernetes.io/name: {{ include "jouletune.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "jouletune.labels" -}}
helm.sh/chart: {{ include "jouletune.chart" . }}
{{ include "jouletune.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: jouletune
{{- end }}

{{- define "jouletune.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "jouletune.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "jouletune.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Labels the operator puts on trial pods (the operator's contract, docs/operator.md). */}}
{{- define "jouletune.trialPodLabel" -}}
jouletune.io/benchmark
{{- end }}

{{/*
What the operator calls, resource by resource: jouletune.operator._rbac.RBAC_RULES, one rule
per (group, resource) with sorted verbs. tests/deploy fails when the two differ.
*/}}
{{- define "jouletune.operatorRules" -}}
# The recommendation as a ready manifest (`<name>-recommendation`).
- apiGroups: [""]
  resources: [configmaps]
  verbs: [create, patch]
# Kubernetes Events per trial (the operator's and Kopf's).
- apiGroups: [""]
  resources: [events]
  verbs: [create]
# Trial pods: create, follow their phase (Kopf's watch), delete once their result is read.
- apiGroups: [""]
  resources: [pods]
  verbs: [create, delete, list, watch]
# Adoption: patch the target Deployment when spec.adopt.mode is Apply.
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, patch]
# The EnergyBenchmarks: Kopf lists and watches them and patches its finalizer/annotations.
- apiGroups: [jouletune.io]
  resources: [energybenchmarks]
  verbs: [list, patch, watch]
# Phase, trials, Pareto front, recommendation.
- apiGroups: [jouletune.io]
  resources: [energybenchmarks/status]
  verbs: [patch]
{{- end }}

{{/* The operator's command line (`jouletune operator ...`; the image's entrypoint is `jouletune`). */}}
{{- define "jouletune.operatorArgs" -}}
- operator
{{- range .Values.operator.watchNamespaces }}
- --namespace={{ . }}
{{- else }}
- --all-namespaces
{{- end }}
- --liveness=http://0.0.0.0:{{ .Values.operator.healthPort }}/healthz
- --metrics-port={{ .Values.operator.metricsPort }}
- --log-level={{ .Values.operator.logLevel }}
- --image-pull-policy={{ .Values.image.pullPolicy }}
{{- with .Values.operator.extraArgs }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Settings the operator reads from its environment: where and with what it runs trial pods. */}}
{{- define "jouletune.operatorEnv" -}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: JOULETUNE_TRIAL_IMAGE
  value: {{ default (include "jouletune.image" .) .Values.trials.image | quote }}
- name: JOULETUNE_TRIAL_NODE_SELECTOR
  value: {{ .Values.trials.nodeSelector | toJson | quote }}
- name: JOULETUNE_TRIAL_TOLERATIONS
  value: {{ .Values.trials.tolerations | toJson | quote }}
- name: MPLCONFIGDIR
  value: /tmp/matplotlib
{{- end }}
