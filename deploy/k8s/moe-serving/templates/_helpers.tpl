{{/* Chart name, truncated to the 63 characters a DNS label allows. */}}
{{- define "moe.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release-qualified name; component names append "-router" etc., so keep room for them. */}}
{{- define "moe.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "moe.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels of one component. Call with (dict "root" $ "component" "router"). */}}
{{- define "moe.selectorLabels" -}}
app.kubernetes.io/name: {{ include "moe.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Full label set of one component. Call with (dict "root" $ "component" "router"). */}}
{{- define "moe.labels" -}}
helm.sh/chart: {{ include "moe.chart" .root }}
{{ include "moe.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: moe-serving
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- end }}

{{- define "moe.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "moe.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "moe.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
Comma-separated gRPC addresses of a worker StatefulSet's pods through its headless Service:
<sts>-<ordinal>.<sts>.<namespace>.svc:<grpc port>, ordinals first .. first+replicas-1 (first: 0 unless
given). Call with (dict "root" $ "component" "attention" "replicas" N [ "first" F ]).
*/}}
{{- define "moe.workerAddresses" -}}
{{- $sts := printf "%s-%s" (include "moe.fullname" .root) .component }}
{{- $first := int (default 0 .first) }}
{{- $addrs := list }}
{{- range $i := until (int .replicas) }}
{{- $addrs = append $addrs (printf "%s-%d.%s.%s.svc:%d" $sts (add $first $i) $sts $.root.Release.Namespace (int $.root.Values.ports.grpc)) }}
{{- end }}
{{- join "," $addrs }}
{{- end }}

{{/*
Every joinable expert worker there may be (expert.autoscaling): the joinable StatefulSet's
pods, ordinals (ranks) expert.replicas .. expert.replicas + maxReplicas - 1. Empty when it is off.
*/}}
{{- define "moe.joinableExpertAddresses" -}}
{{- $e := .Values.expert }}
{{- if $e.autoscaling.enabled }}
{{- include "moe.workerAddresses" (dict "root" . "component" "joinable" "replicas" $e.autoscaling.maxReplicas "first" $e.replicas) }}
{{- end }}
{{- end }}

{{/* The most attention workers there can be: attention.replicas, or autoscaling's maxReplicas. */}}
{{- define "moe.maxAttentionWorkers" -}}
{{- $a := .Values.attention }}
{{- if $a.autoscaling.enabled }}{{ max (int $a.replicas) (int $a.autoscaling.maxReplicas) }}{{ else }}{{ $a.replicas }}{{ end }}
{{- end }}

{{/* Model directory as the services see it. */}}
{{- define "moe.modelDir" -}}
{{- if eq .Values.model.source "generated" }}
{{- printf "%s/generated" .Values.model.mountPath }}
{{- else }}
{{- printf "%s/%s" .Values.model.mountPath .Values.model.path }}
{{- end }}
{{- end }}

{{/* Container ports shared by all services. */}}
{{- define "moe.containerPorts" -}}
- name: grpc
  containerPort: {{ .Values.ports.grpc }}
  protocol: TCP
- name: metrics
  containerPort: {{ .Values.ports.metrics }}
  protocol: TCP
{{- if include "moe.healthPortEnabled" . }}
- name: health
  containerPort: {{ .Values.ports.health }}
  protocol: TCP
{{- end }}
{{- end }}

{{/*
"true" when the services serve grpc.health.v1 in plaintext on ports.health (--health_listen) and
the probes use it: the kubelet's gRPC probes speak plaintext and present no client certificate, so
they cannot use a gRPC port that wants mTLS (tls.enabled) or serves TLS (the router's publicTls).
Empty otherwise: the probes use the gRPC port.
*/}}
{{- define "moe.healthPortEnabled" -}}
{{- if or .Values.tls.enabled .Values.router.publicTls.existingSecret }}true{{ end }}
{{- end }}

{{/* Directory where each pod mounts its role's mTLS Secret (ca.crt, tls.crt, tls.key). */}}
{{- define "moe.tlsDir" -}}/etc/moe/tls{{- end }}

{{/*
The mTLS Secret of a component ("router", "attention", "expert" or "operator", the balancer's):
tls.secrets.<role>, else <fullname>-<component>-tls. Call with (dict "root" $ "component" "router").
*/}}
{{- define "moe.tlsSecretName" -}}
{{- $keys := dict "router" "router" "attention" "attentionWorker" "expert" "expertWorker" "operator" "operator" }}
{{- $given := index .root.Values.tls.secrets (get $keys .component) }}
{{- default (printf "%s-%s-tls" (include "moe.fullname" .root) .component) $given }}
{{- end }}

{{/* The role a component's certificate names as its subject common name (common/rpc/tls.h). */}}
{{- define "moe.tlsCommonName" -}}
{{- get (dict "router" "moe-router" "attention" "moe-attention-worker" "expert" "moe-expert-worker" "operator" "moe-operator") .component }}
{{- end }}

{{/*
Native gRPC probes, on the plaintext health port when there is one (moe.healthPortEnabled), else on
the gRPC port. The health service names are the services' contract (deploy/k8s/README.md):
"startup" turns SERVING once weights are loaded, "liveness" while the process is healthy,
"readiness" while it can take traffic. The startup budget is rounded up to whole periods.
Call with (dict "root" $ "c" .Values.<component>).
*/}}
{{- define "moe.probes" -}}
{{- $p := .root.Values.probes }}
{{- $port := ternary .root.Values.ports.health .root.Values.ports.grpc (eq (include "moe.healthPortEnabled" .root) "true") }}
{{- $period := int .c.startupPeriodSeconds }}
{{- $budget := int .c.startupBudgetSeconds -}}
startupProbe:
  grpc:
    port: {{ $port }}
    service: startup
  periodSeconds: {{ $period }}
  timeoutSeconds: 5
  failureThreshold: {{ div (add $budget (sub $period 1)) $period }}
livenessProbe:
  grpc:
    port: {{ $port }}
    service: liveness
  periodSeconds: {{ $p.liveness.periodSeconds }}
  timeoutSeconds: {{ $p.liveness.timeoutSeconds }}
  failureThreshold: {{ $p.liveness.failureThreshold }}
readinessProbe:
  grpc:
    port: {{ $port }}
    service: readiness
  periodSeconds: {{ $p.readiness.periodSeconds }}
  timeoutSeconds: {{ $p.readiness.timeoutSeconds }}
  failureThreshold: {{ $p.readiness.failureThreshold }}
{{- end }}

{{/*
Environment of every service container: ConfigMap plus the pod's own price, for the workers their
compute device (MOE_DEVICE), and for the router its API keys file and public TLS files when their
Secrets are given. Call with (dict "root" $ "c" .Values.<component> "component" "<component>").
*/}}
{{- define "moe.env" -}}
envFrom:
  - configMapRef:
      name: {{ include "moe.fullname" .root }}
env:
  - name: MOE_WORKER_PRICE_PER_HOUR
    value: {{ .c.pricePerHourDollars | quote }}
  - name: POD_NAME
    valueFrom:
      fieldRef:
        fieldPath: metadata.name
{{- if ne .component "router" }}
  # The worker's compute device (--device): cpu, or cuda[:N] on a GPU node.
  - name: MOE_DEVICE
    value: {{ .c.device | quote }}
{{- end }}
{{- if eq .component "router" }}
{{- if .root.Values.router.apiKeys.existingSecret }}
  - name: MOE_API_KEYS_FILE
    value: /etc/moe/api-keys/api-keys
{{- end }}
{{- if .root.Values.router.publicTls.existingSecret }}
  - name: MOE_PUBLIC_TLS_CERT
    value: /etc/moe/public-tls/tls.crt
  - name: MOE_PUBLIC_TLS_KEY
    value: /etc/moe/public-tls/tls.key
{{- end }}
{{- end }}
{{- with .c.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Volume mounts of every service container: the model, /tmp, the role's mTLS Secret, and for the
router its API keys and public TLS Secrets. Call with (dict "root" $ "component" "<component>").
*/}}
{{- define "moe.volumeMounts" -}}
- name: model
  mountPath: {{ .root.Values.model.mountPath }}
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- if .root.Values.tls.enabled }}
- name: tls
  mountPath: {{ include "moe.tlsDir" . }}
  readOnly: true
{{- end }}
{{- if eq .component "router" }}
{{- if .root.Values.router.apiKeys.existingSecret }}
- name: api-keys
  mountPath: /etc/moe/api-keys
  readOnly: true
{{- end }}
{{- if .root.Values.router.publicTls.existingSecret }}
- name: public-tls
  mountPath: /etc/moe/public-tls
  readOnly: true
{{- end }}
{{- end }}
{{- end }}

{{/*
A Secret volume holding the listed keys (a missing key stops the pod from starting, with an event
naming it), readable by the owner and the pod's fsGroup only (0440). No subPath, so the kubelet's
updates of the Secret reach the files. Call with (dict "name" N "secret" S "keys" (list ...)).
*/}}
{{- define "moe.secretVolume" -}}
- name: {{ .name }}
  secret:
    secretName: {{ .secret }}
    defaultMode: 288
    items:
      {{- range .keys }}
      - key: {{ . }}
        path: {{ . }}
      {{- end }}
{{- end }}

{{/*
Pod volumes: the model source, a scratch /tmp (the root filesystem is read-only), and the Secrets
of moe.volumeMounts. Call with (dict "root" $ "component" "<component>").
*/}}
{{- define "moe.volumes" -}}
{{- with .root -}}
- name: model
{{- if eq .Values.model.source "pvc" }}
  persistentVolumeClaim:
    claimName: {{ include "moe.fullname" . }}-model
    readOnly: true
{{- else if eq .Values.model.source "existingClaim" }}
  persistentVolumeClaim:
    claimName: {{ required "model.existingClaim is required when model.source=existingClaim" .Values.model.existingClaim }}
    readOnly: true
{{- else if eq .Values.model.source "hostPath" }}
  hostPath:
    path: {{ .Values.model.hostPath.path }}
    type: {{ .Values.model.hostPath.type }}
{{- else if eq .Values.model.source "generated" }}
  emptyDir:
    sizeLimit: {{ .Values.model.generated.sizeLimit }}
{{- else }}
{{- fail (printf "model.source must be pvc, existingClaim, hostPath or generated, not %q" .Values.model.source) }}
{{- end }}
- name: tmp
  emptyDir: {}
{{- end }}
{{- if .root.Values.tls.enabled }}
{{ include "moe.secretVolume" (dict "name" "tls" "secret" (include "moe.tlsSecretName" .) "keys" (list "ca.crt" "tls.crt" "tls.key")) }}
{{- end }}
{{- if eq .component "router" }}
{{- with .root.Values.router.apiKeys.existingSecret }}
{{ include "moe.secretVolume" (dict "name" "api-keys" "secret" . "keys" (list "api-keys")) }}
{{- end }}
{{- with .root.Values.router.publicTls.existingSecret }}
{{ include "moe.secretVolume" (dict "name" "public-tls" "secret" . "keys" (list "tls.crt" "tls.key")) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
initContainer that writes the model with `moectl make-model` when model.source=generated. A fixed
preset and seed make every pod produce the same weights, so no shared volume is needed.
*/}}
{{- define "moe.initContainers" -}}
{{- if eq .Values.model.source "generated" }}
initContainers:
  - name: make-model
    image: {{ include "moe.image" . }}
    imagePullPolicy: {{ .Values.image.pullPolicy }}
    command: ["moectl"]
    args:
      - make-model
      - --preset={{ .Values.model.generated.preset }}
      - --dtype={{ .Values.model.generated.dtype }}
      - --seed={{ .Values.model.generated.seed }}
      - --out={{ include "moe.modelDir" . }}
    securityContext:
      {{- toYaml .Values.securityContext | nindent 6 }}
    resources:
      {{- toYaml .Values.initResources | nindent 6 }}
    volumeMounts:
      - name: model
        mountPath: {{ .Values.model.mountPath }}
      - name: tmp
        mountPath: /tmp
{{- end }}
{{- end }}

{{/* Prefer spreading a component's pods over nodes unless the user gave an affinity. */}}
{{- define "moe.affinity" -}}
{{- if .c.affinity }}
{{- toYaml .c.affinity }}
{{- else -}}
podAntiAffinity:
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- include "moe.selectorLabels" (dict "root" .root "component" .component) | nindent 12 }}
{{- end }}
{{- end }}
