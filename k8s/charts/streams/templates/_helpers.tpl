{{/* Names and labels */}}
{{- define "streams.fullname" -}}
{{- printf "%s" .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}

{{- define "streams.labels" -}}
app.kubernetes.io/name: streams
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "streams.selector" -}}
app.kubernetes.io/name: streams
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "streams.secretName" -}}
{{- .Values.secrets.existingSecret | default (printf "%s-secrets" (include "streams.fullname" .)) -}}
{{- end -}}

{{/* The source topics with the app's prefix: what the group reads and KEDA measures */}}
{{- define "streams.fullTopics" -}}
{{- $prefix := .Values.app.topicPrefix -}}
{{- range .Values.app.topics }}
- {{ printf "%s%s" $prefix . }}
{{- end }}
{{- end -}}

{{/* Restricted Pod Security profile: pod and container parts */}}
{{- define "streams.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "streams.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Environment shared by workers and relays: settings, secrets, the CA */}}
{{- define "streams.env" -}}
envFrom:
  - configMapRef:
      name: {{ include "streams.fullname" . }}-settings
  - secretRef:
      name: {{ include "streams.secretName" . }}
      optional: {{ not (empty .Values.secrets.existingSecret) }}
{{- end -}}

{{- define "streams.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
{{- if .Values.kafka.caSecret }}
- name: kafka-ca
  mountPath: /etc/streams/kafka-ca
  readOnly: true
{{- end }}
{{- end -}}

{{- define "streams.volumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: 256Mi
{{- if .Values.kafka.caSecret }}
- name: kafka-ca
  secret:
    secretName: {{ .Values.kafka.caSecret }}
{{- end }}
{{- end -}}
