{{/*
Chart name, truncated to 63 characters (DNS label limit).
*/}}
{{- define "datasetprep.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name: <release>-<chart>, or <release> when it already
contains the chart name, or fullnameOverride. Truncated to 63 characters.
*/}}
{{- define "datasetprep.fullname" -}}
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
Chart label value: <name>-<version>.
*/}}
{{- define "datasetprep.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Selector labels (immutable in a Deployment: never add to these).
*/}}
{{- define "datasetprep.selectorLabels" -}}
app.kubernetes.io/name: {{ include "datasetprep.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Standard labels on every resource (app.kubernetes.io/* + helm.sh/chart).
*/}}
{{- define "datasetprep.labels" -}}
helm.sh/chart: {{ include "datasetprep.chart" . }}
{{ include "datasetprep.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: datasetprep
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Operator ServiceAccount name.
*/}}
{{- define "datasetprep.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "datasetprep.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Job ServiceAccount name (the same in every namespace).
*/}}
{{- define "datasetprep.jobServiceAccountName" -}}
{{- default (printf "%s-job" (include "datasetprep.fullname" .) | trunc 63 | trimSuffix "-") .Values.jobServiceAccount.name }}
{{- end }}

{{/*
Namespaces the operator watches in `namespaces` mode, as a JSON list
(default: the release namespace). Use: include ... | fromJsonArray
*/}}
{{- define "datasetprep.watchNamespaces" -}}
{{- if .Values.watch.namespaces }}
{{- .Values.watch.namespaces | uniq | toJson }}
{{- else }}
{{- list .Release.Namespace | toJson }}
{{- end }}
{{- end }}

{{/*
Namespaces that get the job ServiceAccount + RoleBinding, as a JSON list.
*/}}
{{- define "datasetprep.jobNamespaces" -}}
{{- if .Values.jobServiceAccount.namespaces }}
{{- .Values.jobServiceAccount.namespaces | uniq | toJson }}
{{- else if eq .Values.watch.mode "namespaces" }}
{{- include "datasetprep.watchNamespaces" . }}
{{- else }}
{{- list .Release.Namespace | toJson }}
{{- end }}
{{- end }}

{{/*
"true" when kopf peering is on (forced, or more than one replica), else "".
*/}}
{{- define "datasetprep.peering" -}}
{{- if or .Values.peering.enabled (gt (int .Values.replicaCount) 1) }}true{{- end }}
{{- end }}

{{/*
Image reference: repository@digest, else repository:tag (tag defaults to appVersion).
Call with (dict "repository" ... "tag" ... "digest" ... "root" $)
*/}}
{{- define "datasetprep.image" -}}
{{- if .digest }}
{{- printf "%s@%s" .repository .digest }}
{{- else }}
{{- printf "%s:%s" .repository (default .root.Chart.AppVersion .tag) }}
{{- end }}
{{- end }}

{{/*
Annotations of chart-managed CRDs: kept on `helm uninstall` iff crds.keep, and
likewise never pruned or deleted by Argo CD (which renders the chart with
`helm template` and does not read helm.sh/resource-policy).
*/}}
{{- define "datasetprep.crdAnnotations" -}}
{{- if .Values.crds.keep }}
helm.sh/resource-policy: keep
argocd.argoproj.io/sync-options: Delete=false,Prune=false
{{- end }}
{{- end }}

{{/*
Name of the metrics Service (a DNS-1035 label: at most 63 characters).
*/}}
{{- define "datasetprep.metricsServiceName" -}}
{{- printf "%s-metrics" (include "datasetprep.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels the operator puts on every job pod (operator/datasetprep_operator/naming.py,
child_labels): what the job pods' NetworkPolicy selects. tests/test_chart.py checks that a Job
the operator builds matches them.
*/}}
{{- define "datasetprep.jobPodLabels" -}}
app.kubernetes.io/name: datasetprep
app.kubernetes.io/managed-by: datasetprep-operator
{{- end }}
