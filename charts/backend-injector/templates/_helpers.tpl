{{/*
Names. They do not follow the release name (see fullnameOverride in values.yaml): the CLI,
`doctor` and the docs find the objects under these names.
*/}}
{{- define "backend-injector.fullname" -}}
{{- default .Chart.Name .Values.fullnameOverride | trunc 52 | trimSuffix "-" -}}
{{- end -}}

{{/*
The webhook's namespace: the release's (`helm install -n NS`), as for any chart, so that the
release record and every namespaced object are in one place. Every reference to it (the
registration's Service and selector, the install command, RBAC subjects, certificate names,
the namespaces the webhook never mutates) is made from this.
*/}}
{{- define "backend-injector.namespace" -}}
{{- .Release.Namespace -}}
{{- end -}}

{{- define "backend-injector.tlsSecret" -}}
{{- include "backend-injector.fullname" . }}-tls
{{- end -}}

{{- define "backend-injector.installName" -}}
{{- include "backend-injector.fullname" . }}-install
{{- end -}}

{{- define "backend-injector.credentialsSecret" -}}
{{- default (printf "%s-credentials" (include "backend-injector.fullname" .)) .Values.credentials.existingSecret -}}
{{- end -}}

{{/*
Labels of every object's metadata: those the kustomize base gives (name, part-of) and Helm's
own. Pod templates and selectors carry only name and component, as in the kustomize base,
so that the Deployment's (immutable) selector is the same whichever way it was installed.
*/}}
{{- define "backend-injector.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/part-of: backend-injector
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "backend-injector.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/component: webhook
{{- end -}}

{{- define "backend-injector.image" -}}
{{- printf "%s:%s" .Values.image.repository (toString .Values.image.tag) -}}
{{- end -}}

{{/*
The managed variables of the embedded default. A file is merged over the default, so a
variable dropped in the values (`--set config.env.NAME=null`, which Helm turns into an absent
key) must be written as null to drop it in the webhook too. tests/test_helm_chart.py checks
this list against webhook/settings/document.py.
*/}}
{{- define "backend-injector.defaultEnvNames" -}}
MLFLOW_TRACKING_URI MLFLOW_S3_ENDPOINT_URL GATEWAY_URL
{{- end -}}

{{/*
The namespaces the embedded default never mutates but the webhook's own (backend-injector). A
release in another namespace puts that one in its place. Checked against
webhook/settings/document.py like the list above.
*/}}
{{- define "backend-injector.defaultExcludedNamespaces" -}}
kube-system kube-public kube-node-lease
{{- end -}}

{{/*
config.yaml as the webhook reads it: .Values.config, with `external: null` written out for a
service that has none (absent would keep the default's address, and Helm drops null values),
null for every default variable the values dropped, and the webhook's own namespace among
the excluded ones when it is not the default's.
*/}}
{{- define "backend-injector.config" -}}
{{- $config := deepCopy .Values.config -}}
{{- range $name, $service := ($config.services | default dict) -}}
{{- if not (get $service "external") -}}
{{- $_ := set $service "external" nil -}}
{{- end -}}
{{- end -}}
{{- $env := $config.env | default dict -}}
{{- range splitList " " (include "backend-injector.defaultEnvNames" .) -}}
{{- if not (hasKey $env .) -}}
{{- $_ := set $env . nil -}}
{{- end -}}
{{- end -}}
{{- $_ := set $config "env" $env -}}
{{- $namespace := include "backend-injector.namespace" . -}}
{{- if and (ne $namespace "backend-injector") (not (hasKey $config "excluded_namespaces")) -}}
{{- $_ := set $config "excluded_namespaces" (append (splitList " " (include "backend-injector.defaultExcludedNamespaces" .)) $namespace) -}}
{{- end -}}
{{- toYaml $config -}}
{{- end -}}

{{/* The arguments of `backend-injector install`, for the Job and the CronJob. */}}
{{- define "backend-injector.installArgs" -}}
- install
- --namespace
- {{ include "backend-injector.namespace" . }}
- --service
- {{ include "backend-injector.fullname" . }}
- --secret
- {{ include "backend-injector.tlsSecret" . }}
- --webhook-config
- {{ include "backend-injector.fullname" . }}
- --days
- {{ .Values.certificates.days | quote }}
- --renew-within-days
- {{ .Values.certificates.renewWithinDays | quote }}
{{- end -}}

{{/* The pod spec of the install Job and of the renewal CronJob's Jobs. */}}
{{- define "backend-injector.installPodSpec" -}}
serviceAccountName: {{ include "backend-injector.installName" . }}
automountServiceAccountToken: true
enableServiceLinks: false
restartPolicy: Never
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
securityContext:
  runAsNonRoot: true
  runAsUser: 10001
  runAsGroup: 10001
  seccompProfile:
    type: RuntimeDefault
containers:
  - name: install
    image: {{ include "backend-injector.image" . }}
    imagePullPolicy: {{ .Values.image.pullPolicy }}
    args:
      {{- include "backend-injector.installArgs" . | nindent 6 }}
    resources:
      {{- toYaml .Values.certificates.resources | nindent 6 }}
    securityContext:
      allowPrivilegeEscalation: false
      readOnlyRootFilesystem: true
      runAsNonRoot: true
      runAsUser: 10001
      runAsGroup: 10001
      capabilities:
        drop:
          - ALL
      seccompProfile:
        type: RuntimeDefault
    volumeMounts:
      - name: tmp
        mountPath: /tmp
volumes:
  - name: tmp
    emptyDir:
      medium: Memory
      sizeLimit: 16Mi
{{- end -}}
