{{/* Labels only: the chart hard-codes its backend addresses in the templates. */}}

{{- define "flts.chart" -}}
{{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels; call with (dict "root" $ "component" "train-gru"). */}}
{{- define "flts.selectorLabels" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* All labels; call with (dict "root" $ "component" "train-gru"). */}}
{{- define "flts.labels" -}}
helm.sh/chart: {{ include "flts.chart" .root }}
{{ include "flts.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- end }}
