{{/*
Names and labels. Every helper is prefixed "pgx.".
*/}}

{{/* The chart name (nameOverride wins). */}}
{{- define "pgx.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Prefix of every resource name: the release name, plus the chart name unless the release name
already contains it. Kept short enough that "<fullname>-<schedule>" fits a CronJob name (52).
*/}}
{{- define "pgx.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := include "pgx.name" . }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Chart name and version, for the helm.sh/chart label. */}}
{{- define "pgx.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels: the stable subset that identifies this release's objects. */}}
{{- define "pgx.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pgx.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Common labels of every object. */}}
{{- define "pgx.labels" -}}
helm.sh/chart: {{ include "pgx.chart" . }}
{{ include "pgx.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: pgx
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* The ServiceAccount the run pods use. */}}
{{- define "pgx.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "pgx.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The image reference (tag defaults to the chart's appVersion). */}}
{{- define "pgx.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
Name of one schedule's ConfigMap and CronJob. Call with (dict "root" $ "schedule" $s).
A CronJob name may have at most 52 characters (its Jobs get an 11-character suffix).
*/}}
{{- define "pgx.scheduleName" -}}
{{- $name := printf "%s-%s" (include "pgx.fullname" .root) .schedule.name }}
{{- if gt (len $name) 52 }}
{{- fail (printf "schedule %q: resource name %q is longer than 52 characters; shorten the schedule name or fullnameOverride" .schedule.name $name) }}
{{- end }}
{{- $name }}
{{- end }}

{{/* Fails on repeated schedule names (the schema cannot check uniqueness). */}}
{{- define "pgx.checkSchedules" -}}
{{- $seen := dict }}
{{- range .Values.schedules }}
{{- if hasKey $seen .name }}
{{- fail (printf "schedules: name %q is used twice; schedule names must be unique" .name) }}
{{- end }}
{{- $_ := set $seen .name true }}
{{- end }}
{{- end }}

{{/*
The Job spec of one scheduled run. pgx_core/render.py builds the same shape for
`pgx render`; tests/chart compares the two. Call with (dict "root" $ "schedule" $s).
*/}}
{{- define "pgx.jobSpec" -}}
{{- $root := .root }}
{{- $s := .schedule }}
{{- $v := $root.Values -}}
backoffLimit: {{ $v.job.backoffLimit }}
activeDeadlineSeconds: {{ default $v.job.activeDeadlineSeconds $s.activeDeadlineSeconds }}
ttlSecondsAfterFinished: {{ $v.job.ttlSecondsAfterFinished }}
podFailurePolicy:
  rules:
    # Evictions, preemptions and node drains are not the run's fault: retry without counting.
    - action: Ignore
      onPodConditions:
        - type: DisruptionTarget
          status: "True"
    # Data error (2), conflict (3) and invalid spec (64) will not go away by retrying.
    - action: FailJob
      onExitCodes:
        containerName: pgx
        operator: In
        values: [2, 3, 64]
template:
  metadata:
    labels:
      {{- include "pgx.labels" $root | nindent 6 }}
      app.kubernetes.io/component: run
      pgx.io/run-name: {{ $s.runSpec.metadata.name }}
      {{- with $v.podLabels }}
      {{- toYaml . | nindent 6 }}
      {{- end }}
    {{- with $v.podAnnotations }}
    annotations:
      {{- toYaml . | nindent 6 }}
    {{- end }}
  spec:
    restartPolicy: Never
    serviceAccountName: {{ include "pgx.serviceAccountName" $root }}
    # Nothing in the pod talks to the Kubernetes API; IRSA mounts its own web-identity token.
    automountServiceAccountToken: false
    enableServiceLinks: false
    terminationGracePeriodSeconds: {{ $v.job.terminationGracePeriodSeconds }}
    {{- with $v.priorityClassName }}
    priorityClassName: {{ . }}
    {{- end }}
    {{- with $v.imagePullSecrets }}
    imagePullSecrets:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    securityContext:
      runAsNonRoot: true
      runAsUser: {{ $v.securityContext.runAsUser }}
      runAsGroup: {{ $v.securityContext.runAsGroup }}
      fsGroup: {{ $v.securityContext.fsGroup }}
      seccompProfile:
        type: RuntimeDefault
    containers:
      - name: pgx
        image: {{ include "pgx.image" $root }}
        imagePullPolicy: {{ $v.image.pullPolicy }}
        command: [pgx]
        args:
          - run
          - /etc/pgx/spec.yaml
          {{- range $s.extraArgs }}
          - {{ . | quote }}
          {{- end }}
        env:
          - name: HOME
            value: /tmp
          - name: TMPDIR
            value: /tmp
          - name: RAY_TMPDIR
            value: /tmp/ray
          {{- with $v.ray.address }}
          - name: RAY_ADDRESS
            value: {{ . | quote }}
          {{- end }}
          {{- with $v.extraEnv }}
          {{- toYaml . | nindent 10 }}
          {{- end }}
        resources:
          {{- toYaml (default $v.resources $s.resources) | nindent 10 }}
        securityContext:
          allowPrivilegeEscalation: false
          readOnlyRootFilesystem: true
          runAsNonRoot: true
          runAsUser: {{ $v.securityContext.runAsUser }}
          runAsGroup: {{ $v.securityContext.runAsGroup }}
          capabilities:
            drop: [ALL]
          seccompProfile:
            type: RuntimeDefault
        volumeMounts:
          - name: spec
            mountPath: /etc/pgx
            readOnly: true
          - name: tmp
            mountPath: /tmp
          {{- if not $v.ray.address }}
          - name: dshm
            mountPath: /dev/shm
          {{- end }}
    volumes:
      - name: spec
        configMap:
          name: {{ include "pgx.scheduleName" . }}
          items:
            - key: spec.yaml
              path: spec.yaml
      - name: tmp
        emptyDir:
          sizeLimit: {{ $v.tmp.sizeLimit }}
      {{- if not $v.ray.address }}
      - name: dshm
        emptyDir:
          medium: Memory
          sizeLimit: {{ $v.ray.shmSizeLimit }}
      {{- end }}
    {{- with $v.nodeSelector }}
    nodeSelector:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    {{- with $v.affinity }}
    affinity:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    {{- with $v.tolerations }}
    tolerations:
      {{- toYaml . | nindent 6 }}
    {{- end }}
{{- end }}
