{{/* Selector labels; call with (dict "root" $ "component" "tracker"). */}}
{{- define "shapes.selectorLabels" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}
