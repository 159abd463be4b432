{{/* The chart's name. */}}
{{- define "shepherd.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's full name: resources are named after it. */}}
{{- define "shepherd.fullname" -}}
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

{{- define "shepherd.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object. */}}
{{- define "shepherd.labels" -}}
helm.sh/chart: {{ include "shepherd.chart" . }}
{{ include "shepherd.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/component: gateway
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Labels that select the gateway pods. */}}
{{- define "shepherd.selectorLabels" -}}
app.kubernetes.io/name: {{ include "shepherd.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "shepherd.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "shepherd.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "shepherd.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion | toString) }}
{{- end }}

{{/*
The port of a listen address: "0.0.0.0:8080" and "[::]:8080" give 8080; "" gives "".
*/}}
{{- define "shepherd.port" -}}
{{- regexFind "[0-9]+$" (toString (default "" .)) }}
{{- end }}

{{/* The API port, from config.server.listen (which must not be a loopback address). */}}
{{- define "shepherd.httpPort" -}}
{{- $listen := toString (default "" ((.Values.config).server).listen) }}
{{- if or (eq $listen "") (hasPrefix "127." $listen) (hasPrefix "localhost" $listen) (hasPrefix "[::1]" $listen) }}
{{- fail (printf "config.server.listen is %q: set it to 0.0.0.0:PORT so that the Service and the probes reach the pod" $listen) }}
{{- end }}
{{- include "shepherd.port" $listen }}
{{- end }}

{{/* The admin listener's port, "" when the admin API shares the main listener. */}}
{{- define "shepherd.adminPort" -}}
{{- include "shepherd.port" ((.Values.config).server).admin_listen }}
{{- end }}

{{/* The metrics listener's port, "" when /metrics is on the main listener. */}}
{{- define "shepherd.metricsPort" -}}
{{- include "shepherd.port" ((.Values.config).telemetry).metrics_listen }}
{{- end }}

{{/* The name of the port Prometheus scrapes. */}}
{{- define "shepherd.metricsPortName" -}}
{{- if include "shepherd.metricsPort" . }}metrics{{ else }}http{{ end }}
{{- end }}

{{/*
Whole seconds of a duration of the config ("500ms", "30s", "2m", "1h"), rounded up.
*/}}
{{- define "shepherd.seconds" -}}
{{- $d := toString . | trim }}
{{- if regexMatch "^[0-9]+ms$" $d }}
{{- div (add (trimSuffix "ms" $d | atoi) 999) 1000 }}
{{- else if regexMatch "^[0-9]+s$" $d }}
{{- trimSuffix "s" $d | atoi }}
{{- else if regexMatch "^[0-9]+m$" $d }}
{{- mul (trimSuffix "m" $d | atoi) 60 }}
{{- else if regexMatch "^[0-9]+h$" $d }}
{{- mul (trimSuffix "h" $d | atoi) 3600 }}
{{- else }}
{{- fail (printf "config.server.shutdown_grace %q: write it in whole ms, s, m or h (30s, 2m)" $d) }}
{{- end }}
{{- end }}

{{/*
terminationGracePeriodSeconds: above the preStop sleep plus shutdown_grace, so that streams
draining after SIGTERM are not killed.
*/}}
{{- define "shepherd.terminationGracePeriodSeconds" -}}
{{- $grace := include "shepherd.seconds" (((.Values.config).server).shutdown_grace | default "30s") | atoi }}
{{- $needed := add $grace (int .Values.preStopSleepSeconds) }}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds }}
{{- add $needed 10 }}
{{- else if le (int .Values.terminationGracePeriodSeconds) $needed }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be above shutdown_grace (%ds) + preStopSleepSeconds (%d)" (int .Values.terminationGracePeriodSeconds) $grace (int .Values.preStopSleepSeconds)) }}
{{- else }}
{{- int .Values.terminationGracePeriodSeconds }}
{{- end }}
{{- end }}

{{/* More than one pod needs shared state: Redis and PostgreSQL. */}}
{{- define "shepherd.validateState" -}}
{{- if or .Values.autoscaling.enabled (gt (int .Values.replicaCount) 1) }}
{{- $state := (.Values.config).state | default dict }}
{{- if not $state.redis }}
{{- fail "several replicas (replicaCount > 1 or autoscaling) need config.state.redis: limits, budgets and the cache are shared through Redis" }}
{{- end }}
{{- if not (regexMatch "^(postgres|postgresql)://|^\\$\\{" (toString (default "" $state.database))) }}
{{- fail "several replicas need a PostgreSQL config.state.database (postgres://... or ${VAR} from a Secret), not SQLite" }}
{{- end }}
{{- if .Values.persistence.enabled }}
{{- fail "persistence (a ReadWriteOnce volume for SQLite) allows one replica only" }}
{{- end }}
{{- end }}
{{- end }}

{{/* The Secret the chart creates from secrets.values. */}}
{{- define "shepherd.secretName" -}}
{{- printf "%s-env" (include "shepherd.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
