{{- define "notecard.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "notecard.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "notecard.selectorLabels" -}}
app.kubernetes.io/name: {{ include "notecard.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "notecard.labels" -}}
{{ include "notecard.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* Exactly one Redis and the Secret: a node without them refuses to start anyway. */}}
{{- define "notecard.validate" -}}
{{- $r := .Values.redis -}}
{{- $given := 0 -}}
{{- if $r.url }}{{ $given = add1 $given }}{{ end -}}
{{- if $r.sentinels }}{{ $given = add1 $given }}{{ end -}}
{{- if $r.cluster }}{{ $given = add1 $given }}{{ end -}}
{{- if ne $given 1 -}}
{{- fail "set exactly one of redis.url, redis.sentinels and redis.cluster" -}}
{{- end -}}
{{- if not .Values.secrets.existingSecret -}}
{{- fail "set secrets.existingSecret: a Secret with the token secret and the admin token (see values.yaml)" -}}
{{- end -}}
{{- if and (not .Values.secrets.tokenSecretKey) (not .Values.tokens.jwksUrl) -}}
{{- fail "set tokens.jwksUrl or secrets.tokenSecretKey: a node needs a way to verify client tokens" -}}
{{- end -}}
{{- end -}}

{{- define "notecard.terminationGrace" -}}
{{- add .Values.lifecycle.preStopSleepSeconds .Values.config.shutdownGraceSeconds 5 .Values.lifecycle.terminationMarginSeconds -}}
{{- end -}}
