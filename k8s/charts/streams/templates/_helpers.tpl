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

{{/* The web token the chart's Secret holds: secrets.webToken; else the one an earlier `helm install` generated,
     read back from the cluster (lookup), else a new one (web.generateToken); "" when the views are public or no
     token is to be generated. Included once per rendering (secret.yaml): one draw. */}}
{{- define "streams.webToken" -}}
{{- if not .Values.web.public -}}
{{- if .Values.secrets.webToken -}}
{{- .Values.secrets.webToken -}}
{{- else if .Values.web.generateToken -}}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (include "streams.secretName" .) | default dict -}}
{{- dig "data" "STREAMS_WEB_TOKEN" "" $existing | b64dec | default (randAlphaNum 40) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Opening the web views is web.public=true alone: a token beside it is a contradiction, refused */}}
{{- define "streams.checkWeb" -}}
{{- if and .Values.web.public .Values.secrets.webToken -}}
{{- fail "web.public=true serves the views without a token: drop secrets.webToken (or set web.public=false)" -}}
{{- end -}}
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
