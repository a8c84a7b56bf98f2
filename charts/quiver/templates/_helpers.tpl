{{/* The operator's objects: <release>-operator (release `quiver` gives `quiver-operator`, the
     names of operator/deploy/operator.yaml, its Lease and the runbooks). */}}
{{- define "quiver.fullname" -}}
{{- if hasSuffix "-operator" .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-operator" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "quiver.selectorLabels" -}}
app.kubernetes.io/name: quiver-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "quiver.labels" -}}
{{ include "quiver.selectorLabels" . }}
app.kubernetes.io/part-of: quiver
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "quiver.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "quiver.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "quiver.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "quiver.nodeImage" -}}
{{- printf "%s:%s" .Values.nodeImage.repository (default .Chart.AppVersion .Values.nodeImage.tag) -}}
{{- end -}}

{{/* "true" when the Prometheus operator's objects are to be rendered for value `v`:
     true/false as set, null = when the cluster serves monitoring.coreos.com/v1. */}}
{{- define "quiver.monitoring" -}}
{{- $v := index . 0 -}}
{{- $ctx := index . 1 -}}
{{- if kindIs "bool" $v -}}
{{- ternary "true" "" $v -}}
{{- else if $ctx.Capabilities.APIVersions.Has "monitoring.coreos.com/v1" -}}
true
{{- end -}}
{{- end -}}

{{/* The RBAC rules the operator needs: exactly the verbs it uses (the operator suite runs it
     on these and nothing more; a chart test compares them with operator/deploy/operator.yaml). */}}
{{- define "quiver.rules" -}}
# The resource it reconciles; it writes only the status and its finalizer (never the spec).
- apiGroups: [quiver.dev]
  resources: [vectorindexes]
  verbs: [get, list, watch, patch]
- apiGroups: [quiver.dev]
  resources: [vectorindexes/finalizers]
  verbs: [update]
- apiGroups: [quiver.dev]
  resources: [vectorindexes/status]
  verbs: [get, update]
# Serving children, by server-side apply; orphans deleted.
- apiGroups: [apps]
  resources: [statefulsets, deployments]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [services, serviceaccounts]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [get, list, watch, create, patch, delete]
# The node pods' read-only Role: granting it needs the same read access.
- apiGroups: [rbac.authorization.k8s.io]
  resources: [roles, rolebindings]
  verbs: [get, list, watch, create, patch, delete]
# Train, build, finalize, cleanup and GC Jobs.
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, watch, create, delete]
# Node pods: readiness, IPs for their Admin API, Job pods' termination messages.
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch]
# Events for every lifecycle step.
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create, patch]
# Leader election.
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  verbs: [get, create, update, patch]
{{- end -}}
