{{/* Names and labels. */}}
{{- define "aios.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "aios.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector labels of one role: include "aios.selector" (list $ "web") */}}
{{- define "aios.selector" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ $root.Chart.Name }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "aios.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "aios.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "aios.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "aios.host" -}}
{{- required "host is required: the public host name users reach (e.g. --set host=aios.example.com)" .Values.host -}}
{{- end -}}

{{/* The environment every AIOS process gets: production, the host, and each secret as a *_FILE. */}}
{{- define "aios.env" -}}
{{- $host := include "aios.host" . -}}
- name: AIOS_ENV
  value: production
- name: DJANGO_ALLOWED_HOSTS
  value: {{ $host | quote }}
- name: DJANGO_CSRF_TRUSTED_ORIGINS
  value: {{ printf "https://%s" $host | quote }}
- name: AIOS_PUBLIC_URLS
  value: {{ printf "https://%s" $host | quote }}
- name: FORWARDED_ALLOW_IPS
  value: {{ .Values.forwardedAllowIps | quote }}
- name: AIOS_DATA_DIR
  value: /var/lib/aios
- name: AIOS_AUDIT_CHECKPOINT_DIR
  value: /var/lib/aios-checkpoints
{{- range $name, $value := .Values.config }}
- name: {{ $name }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- range $name, $key := .Values.secretKeys }}
- name: {{ printf "%s_FILE" $name }}
  value: {{ printf "/run/secrets/aios/%s" $name | quote }}
{{- end }}
{{- end -}}

{{- define "aios.volumes" -}}
- name: secrets
  secret:
    secretName: {{ required "existingSecret is required: the name of a Secret holding the keys listed in secretKeys (the chart creates no secrets)" .Values.existingSecret | quote }}
    defaultMode: 0440
    items:
    {{- range $name, $key := .Values.secretKeys }}
      - key: {{ $key | quote }}
        path: {{ $name | quote }}
    {{- end }}
- name: tmp
  emptyDir: {}
- name: data
  emptyDir: {}
- name: audit-checkpoints
  {{- if .Values.auditCheckpoints.existingClaim }}
  persistentVolumeClaim:
    claimName: {{ .Values.auditCheckpoints.existingClaim | quote }}
  {{- else }}
  emptyDir: {}
  {{- end }}
{{- end -}}

{{- define "aios.volumeMounts" -}}
- name: secrets
  mountPath: /run/secrets/aios
  readOnly: true
- name: tmp
  mountPath: /tmp
- name: data
  mountPath: /var/lib/aios
- name: audit-checkpoints
  mountPath: /var/lib/aios-checkpoints
{{- end -}}

{{/* The pod spec's shared part: account, security, scheduling. */}}
{{- define "aios.podCommon" -}}
serviceAccountName: {{ include "aios.serviceAccountName" . }}
automountServiceAccountToken: false
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
volumes:
  {{- include "aios.volumes" . | nindent 2 }}
{{- end -}}

{{/* A web-server container (web or websocket): include "aios.webContainer" (list $ "web" $resources) */}}
{{- define "aios.webContainer" -}}
{{- $root := index . 0 -}}
{{- $role := index . 1 -}}
- name: {{ $role }}
  image: {{ include "aios.image" $root | quote }}
  imagePullPolicy: {{ $root.Values.image.pullPolicy }}
  args: [{{ $role | quote }}, "--port", {{ $root.Values.web.port | quote }}]
  env:
    {{- include "aios.env" $root | nindent 4 }}
  ports:
    - name: http
      containerPort: {{ $root.Values.web.port }}
      protocol: TCP
  # Probes carry the public host: Django answers 400 to a Host header it does not allow. /healthz and /readyz
  # are exempt from the HTTPS redirect.
  startupProbe:
    httpGet: {path: /healthz, port: http, httpHeaders: [{name: Host, value: {{ include "aios.host" $root | quote }}}]}
    periodSeconds: 5
    failureThreshold: 30
  livenessProbe:
    httpGet: {path: /healthz, port: http, httpHeaders: [{name: Host, value: {{ include "aios.host" $root | quote }}}]}
    periodSeconds: 15
    timeoutSeconds: 5
    failureThreshold: 3
  readinessProbe:
    httpGet: {path: /readyz, port: http, httpHeaders: [{name: Host, value: {{ include "aios.host" $root | quote }}}]}
    periodSeconds: 10
    timeoutSeconds: 8
    failureThreshold: 3
  resources:
    {{- toYaml (index . 2) | nindent 4 }}
  securityContext:
    {{- toYaml $root.Values.securityContext | nindent 4 }}
  volumeMounts:
    {{- include "aios.volumeMounts" $root | nindent 4 }}
{{- end -}}
