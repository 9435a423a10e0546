{{/* Names, labels and the derived settings shared by every template. */}}

{{- define "msc.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "msc.fullname" -}}
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

{{- define "msc.selectorLabels" -}}
app.kubernetes.io/name: {{ include "msc.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: controller
{{- end }}

{{- define "msc.labels" -}}
app.kubernetes.io/name: {{ include "msc.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: module-service-controller
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end }}

{{/* The profiles: API group and module label prefix. */}}
{{- define "msc.profileGroup" -}}
{{- get (dict "seed" "koupleless.alipay.com" "koupleless" "koupleless.io" "sofa-serverless" "serverless.alipay.com") .Values.profile }}
{{- end }}

{{/* The API group the controller serves: the override, else the profile's. */}}
{{- define "msc.apiGroup" -}}
{{- default (include "msc.profileGroup" .) .Values.apiGroup }}
{{- end }}

{{/* The leader-election Lease of this release: one per release and profile, so that two releases in one
     namespace (say koupleless and sofa-serverless during a migration) elect a leader each. A Lease name
     is a DNS subdomain (253 characters): the 63 of the fullname plus a profile fit. */}}
{{- define "msc.leaseName" -}}
{{- printf "%s-%s" (include "msc.fullname" .) .Values.profile }}
{{- end }}

{{/* Whether the deletion guard is rendered: on, cluster-wide (a namespaced install cannot create a
     cluster-scoped policy) and served by the cluster. `helm template` knows no cluster: pass
     --api-versions admissionregistration.k8s.io/v1/ValidatingAdmissionPolicy to render it there. */}}
{{- define "msc.guardEnabled" -}}
{{- if and .Values.guard.enabled (not .Values.namespaced.enabled) (.Capabilities.APIVersions.Has "admissionregistration.k8s.io/v1/ValidatingAdmissionPolicy") }}true{{ end }}
{{- end }}

{{- define "msc.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{- define "msc.metricsPort" -}}
{{- if .Values.metrics.port }}{{ .Values.metrics.port }}{{ else if .Values.metrics.secure }}8443{{ else }}8080{{ end }}
{{- end }}

{{- define "msc.metricsPortName" -}}
{{- if .Values.metrics.secure }}https{{ else }}http{{ end }}
{{- end }}

{{/* Namespaces served in namespaced mode. */}}
{{- define "msc.servedNamespaces" -}}
{{- if .Values.namespaced.namespaces }}{{ join "," .Values.namespaced.namespaces }}{{ else }}{{ .Release.Namespace }}{{ end }}
{{- end }}

{{/* The controller's rules on ModuleDeployments, Services, Pods and Events (in every mode). Keep in
     sync with manifests/rbac/role.yaml: tests/unit/test_chart.py compares the two renderings. */}}
{{- define "msc.controllerRules" -}}
# Read the ModuleDeployments; the spec is never written.
- apiGroups: [{{ include "msc.apiGroup" . | quote }}]
  resources: ["moduledeployments"]
  verbs: ["get", "list", "watch"]
# status.moduleService only, through the status subresource.
- apiGroups: [{{ include "msc.apiGroup" . | quote }}]
  resources: ["moduledeployments/status"]
  verbs: ["get", "patch", "update"]
# Needed to set blockOwnerDeletion: true on owner references (OwnerReferencesPermissionEnforcement).
- apiGroups: [{{ include "msc.apiGroup" . | quote }}]
  resources: ["moduledeployments/finalizers"]
  verbs: ["update"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["", "events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}

{{/* Checks across values that the schema cannot express; each fails with what to change. */}}
{{- define "msc.validate" -}}
{{- if and .Values.namespaced.enabled .Values.metrics.enabled .Values.metrics.secure }}
{{- fail "namespaced.enabled=true needs metrics.secure=false: secure metrics check scrapers with TokenReview and SubjectAccessReview, which only a ClusterRole can grant" }}
{{- end }}
{{- if and (gt (int .Values.replicas) 1) (not .Values.leaderElection.enabled) }}
{{- fail (printf "replicas=%d needs leaderElection.enabled=true: without a Lease every replica would write the same Services" (int .Values.replicas)) }}
{{- end }}
{{- if and .Values.podDisruptionBudget.enabled (not (kindIs "invalid" .Values.podDisruptionBudget.maxUnavailable)) (not (kindIs "invalid" .Values.podDisruptionBudget.minAvailable)) }}
{{- fail "podDisruptionBudget: set either maxUnavailable or minAvailable, not both (set the other to null)" }}
{{- end }}
{{- if and .Values.podDisruptionBudget.enabled (kindIs "invalid" .Values.podDisruptionBudget.maxUnavailable) (kindIs "invalid" .Values.podDisruptionBudget.minAvailable) }}
{{- fail "podDisruptionBudget.enabled=true needs maxUnavailable or minAvailable" }}
{{- end }}
{{- if and .Values.serviceMonitor.enabled (not .Values.metrics.enabled) }}
{{- fail "serviceMonitor.enabled=true needs metrics.enabled=true" }}
{{- end }}
{{- end }}

{{/* The job label Prometheus gives this release's targets: a ServiceMonitor names it after the metrics
Service. The alerts and the dashboard select it. */}}
{{- define "msc.metricsJob" -}}
{{- printf "%s-metrics" (include "msc.fullname" .) -}}
{{- end }}
