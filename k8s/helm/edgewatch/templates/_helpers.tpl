{{/* The release's full name: the release name, or release-chart when it does not contain the chart's. */}}
{{- define "edgewatch.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* The headless Service that gives each Bytewax process a stable DNS name. */}}
{{- define "edgewatch.headless" -}}
{{- printf "%s-peers" (include "edgewatch.fullname" .) -}}
{{- end -}}

{{- define "edgewatch.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "edgewatch.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "edgewatch.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "edgewatch.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "edgewatch.labels" -}}
{{ include "edgewatch.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Bytewax addresses, "host:port;host:port": process N is pod N of the StatefulSet. */}}
{{- define "edgewatch.addresses" -}}
{{- $fullname := include "edgewatch.fullname" . -}}
{{- $domain := printf "%s.%s.svc.%s" (include "edgewatch.headless" .) .Release.Namespace .Values.cluster.clusterDomain -}}
{{- $addresses := list -}}
{{- range $ordinal := until (int .Values.cluster.processes) -}}
{{- $addresses = append $addresses (printf "%s-%d.%s:%d" $fullname $ordinal $domain (int $.Values.cluster.port)) -}}
{{- end -}}
{{- join ";" $addresses -}}
{{- end -}}

{{/* A setting's value as an env string: whole numbers without a decimal point or exponent. */}}
{{- define "edgewatch.envValue" -}}
{{- if and (kindIs "float64" .) (eq (float64 (int64 .)) .) -}}
{{- int64 . -}}
{{- else -}}
{{- toString . -}}
{{- end -}}
{{- end -}}

{{/* EDGEWATCH_* of `settings` (null = edgewatch's default) and of the Kafka Secrets. */}}
{{- define "edgewatch.kafkaEnv" -}}
{{- range $name, $value := .Values.settings }}
{{- if not (kindIs "invalid" $value) }}
- name: {{ printf "EDGEWATCH_%s" (upper $name) }}
  value: {{ include "edgewatch.envValue" $value | quote }}
{{- end }}
{{- end }}
{{- with .Values.kafkaSecret }}
{{- if .name }}
{{- if .eventhubsConnectionStringKey }}
- name: EDGEWATCH_EVENTHUBS_CONNECTION_STRING
  valueFrom:
    secretKeyRef:
      name: {{ .name }}
      key: {{ .eventhubsConnectionStringKey }}
{{- else }}
- name: EDGEWATCH_SASL_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ .name }}
      key: {{ .usernameKey }}
- name: EDGEWATCH_SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .name }}
      key: {{ .passwordKey }}
{{- end }}
{{- end }}
{{- end }}
{{- if .Values.kafkaCa.secretName }}
- name: EDGEWATCH_SSL_CA_LOCATION
  value: {{ printf "/etc/edgewatch/kafka-ca/%s" .Values.kafkaCa.key | quote }}
{{- end }}
{{- with .Values.cloudSecret }}
{{- if and .name .iothubConnectionStringKey }}
- name: EDGEWATCH_IOTHUB_CONNECTION_STRING
  valueFrom:
    secretKeyRef:
      name: {{ .name }}
      key: {{ .iothubConnectionStringKey }}
{{- end }}
{{- if and .name .eventhubsSinkConnectionStringKey }}
- name: EDGEWATCH_EVENTHUBS_SINK_CONNECTION_STRING
  valueFrom:
    secretKeyRef:
      name: {{ .name }}
      key: {{ .eventhubsSinkConnectionStringKey }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Pod-level security shared by the flow and the simulator. */}}
{{- define "edgewatch.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "edgewatch.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop:
    - ALL
{{- end -}}

{{/* Refuse value sets that cannot work, before anything reaches the cluster. */}}
{{- define "edgewatch.validate" -}}
{{- $workers := mul (int .Values.cluster.processes) (int .Values.cluster.workersPerProcess) -}}
{{- if kindIs "invalid" .Values.settings.shards -}}
{{- fail "settings.shards must be set: the shard count is pinned in the recovery volume" -}}
{{- end -}}
{{- if lt (int .Values.settings.shards) $workers -}}
{{- fail (printf "settings.shards (%d) must be at least cluster.processes × cluster.workersPerProcess (%d): each worker owns whole shards" (int .Values.settings.shards) $workers) -}}
{{- end -}}
{{- if and (eq .Values.model.source "pvc") (not .Values.model.existingClaim) -}}
{{- fail "model.source=pvc needs model.existingClaim" -}}
{{- end -}}
{{- if and (eq .Values.model.source "image") (not .Values.model.image.repository) -}}
{{- fail "model.source=image needs model.image.repository" -}}
{{- end -}}
{{- if and .Values.kafkaSecret.name (not .Values.kafkaSecret.eventhubsConnectionStringKey) (not .Values.settings.sasl_mechanism) -}}
{{- fail "kafkaSecret holds SASL credentials: set settings.sasl_mechanism (e.g. PLAIN, SCRAM-SHA-512) and settings.security_protocol" -}}
{{- end -}}
{{- end -}}
