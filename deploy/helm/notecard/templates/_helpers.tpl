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
{{- if and .Values.ledger.enabled (not .Values.secrets.postgresUrlKey) -}}
{{- fail "set secrets.postgresUrlKey (the Secret's key holding NOTECARD_POSTGRES_URL) or ledger.enabled: false" -}}
{{- end -}}
{{- if and .Values.webhooks.enabled (not .Values.webhooks.urls) -}}
{{- fail "set webhooks.urls: where notecard webhooks POSTs the gift events" -}}
{{- end -}}
{{- if and .Values.webhooks.enabled (not .Values.secrets.webhookSecretKey) -}}
{{- fail "set secrets.webhookSecretKey: the Secret's key holding the webhooks' signing secret" -}}
{{- end -}}
{{- end -}}

{{/* Where Redis is and its passwords: the nodes' and every side process's. */}}
{{- define "notecard.redisEnv" -}}
{{- /* the durability preset too: the ledger consumer waits for the same replicas as the nodes */ -}}
{{- with .Values.config.durability }}
- name: NOTECARD_DURABILITY
  value: {{ . | quote }}
{{- end }}
{{- with .Values.redis.url }}
- name: NOTECARD_REDIS_URL
  value: {{ . | quote }}
{{- end }}
{{- with .Values.redis.sentinels }}
- name: NOTECARD_SENTINELS
  value: {{ join "," . | quote }}
- name: NOTECARD_SENTINEL_MASTER
  value: {{ $.Values.redis.sentinelMaster | quote }}
{{- end }}
{{- with .Values.redis.cluster }}
- name: NOTECARD_REDIS_CLUSTER
  value: {{ join "," . | quote }}
{{- end }}
{{- if .Values.redis.tls }}
- name: NOTECARD_REDIS_TLS
  value: "true"
{{- end }}
{{- if .Values.redis.sentinelTls }}
- name: NOTECARD_SENTINEL_TLS
  value: "true"
{{- end }}
{{- with .Values.redis.username }}
- name: NOTECARD_REDIS_USERNAME
  value: {{ . | quote }}
{{- end }}
{{- with .Values.redis.sentinelUsername }}
- name: NOTECARD_SENTINEL_USERNAME
  value: {{ . | quote }}
{{- end }}
{{- with .Values.secrets.redisPasswordKey }}
- name: NOTECARD_REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $.Values.secrets.existingSecret }}
      key: {{ . }}
      optional: true
{{- end }}
{{- with .Values.secrets.sentinelPasswordKey }}
- name: NOTECARD_SENTINEL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $.Values.secrets.existingSecret }}
      key: {{ . }}
{{- end }}
{{- end -}}

{{/* A side process's labels: a name of its own, so that the nodes' selectors (name and
instance) never pick its pods. Called with (dict "root" $ "process" "ledger"). */}}
{{- define "notecard.sideSelectorLabels" -}}
app.kubernetes.io/name: {{ printf "%s-%s" (include "notecard.name" .root) .process | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .process }}
{{- end -}}

{{- define "notecard.terminationGrace" -}}
{{- add .Values.lifecycle.preStopSleepSeconds .Values.config.shutdownGraceSeconds 5 .Values.lifecycle.terminationMarginSeconds -}}
{{- end -}}
