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

{{/* The metrics Service: a Service name is a DNS-1035 label (63 characters), so the fullname is cut to
     leave room for the suffix, which stays (it tells the Service from the release's other objects). */}}
{{- define "msc.metricsServiceName" -}}
{{- printf "%s-metrics" (include "msc.fullname" . | trunc 55 | trimSuffix "-") }}
{{- end }}

{{/* helm.sh/chart: a label value allows no "+" (SemVer build metadata). */}}
{{- define "msc.chartLabel" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "msc.selectorLabels" -}}
app.kubernetes.io/name: {{ include "msc.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: controller
{{- end }}

{{/* The labels of every object: commonLabels, under the chart's own (which win on a clash). */}}
{{- define "msc.labels" -}}
{{- $labels := dict
  "app.kubernetes.io/name" (include "msc.name" .)
  "app.kubernetes.io/instance" .Release.Name
  "app.kubernetes.io/part-of" "module-service-controller"
  "app.kubernetes.io/managed-by" .Release.Service
  "app.kubernetes.io/version" (toString .Chart.AppVersion)
  "helm.sh/chart" (include "msc.chartLabel" .) }}
{{- toYaml (merge $labels (deepCopy (.Values.commonLabels | default dict))) }}
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

{{/* Secure metrics (TokenReview and SubjectAccessReview on every scrape): the only case that needs those
     two rights and the metrics-reader ClusterRole. */}}
{{- define "msc.secureMetrics" -}}
{{- if and .Values.metrics.enabled .Values.metrics.secure }}true{{ end }}
{{- end }}

{{/* The ServiceAccount whose token the ServiceMonitor or PodMonitor scrapes with: rendered when secure
     metrics are scraped by one of them without credentials of the user's. */}}
{{- define "msc.scraperEnabled" -}}
{{- if include "msc.secureMetrics" . }}
{{- if or (and .Values.serviceMonitor.enabled (not .Values.serviceMonitor.authorization)) (and .Values.podMonitor.enabled (not .Values.podMonitor.authorization)) }}true{{ end }}
{{- end }}
{{- end }}

{{- define "msc.scraperName" -}}
{{- printf "%s-metrics-scraper" (include "msc.fullname" .) }}
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

{{/* Where metrics.certSecret is mounted (--metrics-cert-dir). */}}
{{- define "msc.metricsCertDir" -}}
/etc/module-service-controller/metrics-certs
{{- end }}

{{/* Namespaces served in namespaced mode. */}}
{{- define "msc.servedNamespaces" -}}
{{- if .Values.namespaced.namespaces }}{{ join "," .Values.namespaced.namespaces }}{{ else }}{{ .Release.Namespace }}{{ end }}
{{- end }}

{{/* The controller's rules on ModuleDeployments, Services, Pods and Events (in every mode). Keep in
     sync with manifests/rbac/role.yaml: tests/render/test_chart.py compares the two renderings. */}}
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

{{/* The flags the chart derives from its values, one per line, before the free-form `args`. */}}
{{- define "msc.chartArgs" -}}
{{- if .Values.leaderElection.enabled }}
--leader-elect
--leader-elect-name={{ include "msc.leaseName" . }}
{{- with .Values.leaderElection.leaseDuration }}
--leader-elect-lease-duration={{ . }}
{{- end }}
{{- with .Values.leaderElection.renewDeadline }}
--leader-elect-renew-deadline={{ . }}
{{- end }}
{{- with .Values.leaderElection.retryPeriod }}
--leader-elect-retry-period={{ . }}
{{- end }}
{{- end }}
{{- if .Values.metrics.enabled }}
{{- if .Values.metrics.secure }}
--metrics-secure
{{- end }}
--metrics-bind-address=:{{ include "msc.metricsPort" . }}
{{- with .Values.metrics.certSecret }}
--metrics-cert-dir={{ include "msc.metricsCertDir" $ }}
{{- end }}
{{- else }}
--metrics-bind-address=0
{{- end }}
--health-probe-bind-address=:{{ .Values.probes.port }}
{{- with .Values.shutdownTimeout }}
--shutdown-timeout={{ . }}
{{- end }}
--log-level={{ .Values.logLevel }}
--log-format={{ .Values.logFormat }}
{{- if .Values.namespaced.enabled }}
{{- range splitList "," (include "msc.servedNamespaces" .) }}
--namespace={{ . }}
{{- end }}
{{- end }}
{{- /* The seed profile is the controller's default: no flag. */}}
{{- if ne .Values.profile "seed" }}
--profile={{ .Values.profile }}
{{- end }}
{{- with .Values.apiGroup }}
--api-group={{ . }}
{{- end }}
{{- with .Values.apiVersion }}
--api-version={{ . }}
{{- end }}
{{- with .Values.moduleLabelPrefix }}
--module-label-prefix={{ . }}
{{- end }}
{{- if not .Values.adoptUnownedServices }}
--adopt-unowned-services=false
{{- end }}
{{- end }}

{{/* Every flag of the container, in order: the chart's, then `args`. */}}
{{- define "msc.allArgs" -}}
{{- $all := list }}
{{- range splitList "\n" (include "msc.chartArgs" .) }}
{{- if . }}{{ $all = append $all . }}{{ end }}
{{- end }}
{{- concat $all .Values.args | toJson }}
{{- end }}

{{/* The value of flag `flag` (given as "--name") on the command line `args` (a list), as the controller
     reads it: the last one wins. Empty when absent. */}}
{{- define "msc.flagValue" -}}
{{- $prefix := printf "%s=" .flag }}
{{- $value := "" }}
{{- range .args }}
{{- if hasPrefix $prefix . }}{{ $value = trimPrefix $prefix . }}{{ end }}
{{- end }}
{{- $value }}
{{- end }}

{{/* A duration in seconds (a float), as the controller parses it: 500ms, 20s, 1.5m, 1h, or a bare number of
     seconds. */}}
{{- define "msc.seconds" -}}
{{- $number := regexFind "^[0-9]+(\\.[0-9]+)?" . }}
{{- $unit := trimPrefix $number . }}
{{- mulf (float64 $number) (get (dict "ms" 0.001 "s" 1.0 "m" 60.0 "h" 3600.0 "" 1.0) $unit) }}
{{- end }}

{{/* The value of an env entry named `name` in `env`, empty when absent or not a plain value. */}}
{{- define "msc.envValue" -}}
{{- $name := .name }}
{{- $value := "" }}
{{- range .env }}
{{- if and (eq .name $name) (hasKey . "value") }}{{ $value = toString .value }}{{ end }}
{{- end }}
{{- $value }}
{{- end }}

{{/* How long the controller may take after SIGTERM, in seconds (a float): the drain (--shutdown-timeout,
     25 s by default) and, with leader election, the Lease release (bounded by --leader-elect-renew-deadline,
     10 s by default). A flag wins over its MSC_ variable, as in the controller. */}}
{{- define "msc.shutdownSeconds" -}}
{{- $args := include "msc.allArgs" . | fromJsonArray }}
{{- $drain := include "msc.flagValue" (dict "flag" "--shutdown-timeout" "args" $args) }}
{{- $drain = $drain | default (include "msc.envValue" (dict "name" "MSC_SHUTDOWN_TIMEOUT" "env" .Values.env)) | default "25s" }}
{{- $seconds := include "msc.seconds" $drain | float64 }}
{{- if .Values.leaderElection.enabled }}
{{- $renew := include "msc.flagValue" (dict "flag" "--leader-elect-renew-deadline" "args" $args) }}
{{- $renew = $renew | default (include "msc.envValue" (dict "name" "MSC_LEADER_ELECT_RENEW_DEADLINE" "env" .Values.env)) | default "10s" }}
{{- $seconds = addf $seconds (include "msc.seconds" $renew | float64) }}
{{- end }}
{{- $seconds }}
{{- end }}

{{/* terminationGracePeriodSeconds: the value, or what the controller needs plus 5 s for the process to exit
     and the kubelet to notice. */}}
{{- define "msc.terminationGracePeriodSeconds" -}}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds }}
{{- add (include "msc.shutdownSeconds" . | float64 | ceil | int) 5 }}
{{- else }}
{{- .Values.terminationGracePeriodSeconds }}
{{- end }}
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
{{- if and .Values.podMonitor.enabled (not .Values.metrics.enabled) }}
{{- fail "podMonitor.enabled=true needs metrics.enabled=true" }}
{{- end }}
{{- if and .Values.serviceMonitor.enabled .Values.podMonitor.enabled }}
{{- fail "serviceMonitor.enabled and podMonitor.enabled: choose one, or every replica is scraped twice and the alerts count each series twice" }}
{{- end }}
{{- if and .Values.prometheusRule.enabled (not .Values.metrics.enabled) }}
{{- fail "prometheusRule.enabled=true needs metrics.enabled=true: without /metrics the alerts ModuleServiceControllerDown and ModuleServiceControllerNoLeader would fire forever" }}
{{- end }}
{{- if and .Values.metrics.certSecret (not (include "msc.secureMetrics" .)) }}
{{- fail "metrics.certSecret is the certificate of secure metrics: it needs metrics.enabled=true and metrics.secure=true" }}
{{- end }}
{{- $needed := include "msc.shutdownSeconds" . | float64 }}
{{- if and (not (kindIs "invalid" .Values.terminationGracePeriodSeconds)) (lt (float64 .Values.terminationGracePeriodSeconds) $needed) }}
{{- fail (printf "terminationGracePeriodSeconds=%v is shorter than the %vs the controller may take after SIGTERM (--shutdown-timeout plus, with leader election, --leader-elect-renew-deadline for the Lease release): raise it, lower shutdownTimeout, or set it to null to have it computed" .Values.terminationGracePeriodSeconds $needed) }}
{{- end }}
{{- /* An MSC_ variable is ignored when its flag is on the command line, and a variable the chart sets
       itself would be there twice. */}}
{{- $args := include "msc.allArgs" . | fromJsonArray }}
{{- $names := list }}
{{- range .Values.env }}
{{- $env := .name }}
{{- if has .name (list "MSC_LEADER_ELECT_NAMESPACE" "TMPDIR") }}
{{- fail (printf "env: %s is set by the chart" .name) }}
{{- end }}
{{- if has .name $names }}
{{- fail (printf "env: %s is listed twice" .name) }}
{{- end }}
{{- $names = append $names .name }}
{{- if hasPrefix "MSC_" .name }}
{{- $flag := printf "--%s" (.name | trimPrefix "MSC_" | lower | replace "_" "-") }}
{{- range $args }}
{{- if or (eq . $flag) (hasPrefix (printf "%s=" $flag) .) }}
{{- fail (printf "env: %s would be ignored, the flag %s is on the command line (%s): set it through its value (logLevel, logFormat, shutdownTimeout, leaderElection.*, ...) or args instead" $env $flag .) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* The job label Prometheus gives this release's targets: a ServiceMonitor names it after the metrics
Service, and the PodMonitor sets the same. The alerts and the dashboard select it. */}}
{{- define "msc.metricsJob" -}}
{{- include "msc.metricsServiceName" . -}}
{{- end }}

{{/* One scrape endpoint of a ServiceMonitor or PodMonitor; `monitor` is serviceMonitor or podMonitor. */}}
{{- define "msc.scrapeEndpoint" -}}
{{- $root := .root }}
{{- $m := .monitor -}}
- port: {{ include "msc.metricsPortName" $root }}
  path: /metrics
  interval: {{ $m.interval }}
  {{- with $m.scrapeTimeout }}
  scrapeTimeout: {{ . }}
  {{- end }}
  {{- if include "msc.secureMetrics" $root }}
  scheme: https
  # Authenticated by a TokenReview, authorized by a SubjectAccessReview for get on /metrics.
  authorization:
    {{- if $m.authorization }}
    {{- toYaml $m.authorization | nindent 4 }}
    {{- else }}
    type: Bearer
    # The token of <fullname>-metrics-scraper, bound to the metrics-reader ClusterRole.
    credentials:
      name: {{ include "msc.scraperName" $root }}-token
      key: token
    {{- end }}
  {{- with $m.tlsConfig }}
  tlsConfig:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- else }}
  scheme: http
  {{- end }}
  {{- if or .jobRelabeling $m.relabelings }}
  relabelings:
    {{- if .jobRelabeling }}
    # The job of the ServiceMonitor (named after the metrics Service), which the alerts and the dashboard
    # select; a PodMonitor's own would be <namespace>/<name>.
    - action: replace
      targetLabel: job
      replacement: {{ include "msc.metricsJob" $root }}
    {{- end }}
    {{- with $m.relabelings }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- end }}
  {{- with $m.metricRelabelings }}
  metricRelabelings:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
