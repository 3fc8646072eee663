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

{{/* Fails on Ray settings the schema cannot check. */}}
{{- define "pgx.checkRay" -}}
{{- $ray := .Values.ray }}
{{- if and (eq $ray.mode "cluster") (not $ray.address) }}
{{- fail "ray.mode is cluster: set ray.address to the cluster's address, e.g. ray://pgx-raycluster-head-svc:10001" }}
{{- end }}
{{- if and (or $ray.address $ray.tokenSecret) (ne $ray.mode "cluster") }}
{{- fail (printf "ray.address or ray.tokenSecret is set but ray.mode is %s: set ray.mode: cluster to join that cluster, or leave them empty" $ray.mode) }}
{{- end }}
{{- $w := $ray.workers }}
{{- if not (and (le (int $w.minReplicas) (int $w.replicas)) (le (int $w.replicas) (int $w.maxReplicas))) }}
{{- fail (printf "ray.workers: need minReplicas <= replicas <= maxReplicas, got %v <= %v <= %v" $w.minReplicas $w.replicas $w.maxReplicas) }}
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
      {{- include "pgx.podSecurity" $root | nindent 6 }}
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
          {{- if eq $v.ray.mode "cluster" }}
          - name: RAY_ADDRESS
            value: {{ $v.ray.address | quote }}
          {{- with $v.ray.tokenSecret }}
          - name: RAY_AUTH_MODE
            value: token
          - name: RAY_AUTH_TOKEN
            valueFrom:
              secretKeyRef:
                name: {{ . }}
                key: auth_token
          {{- end }}
          {{- end }}
          {{- with $v.extraEnv }}
          {{- toYaml . | nindent 10 }}
          {{- end }}
        resources:
          {{- toYaml (default $v.resources $s.resources) | nindent 10 }}
        securityContext:
          {{- include "pgx.containerSecurity" $root | nindent 10 }}
        volumeMounts:
          - name: spec
            mountPath: /etc/pgx
            readOnly: true
          - name: tmp
            mountPath: /tmp
          {{- if eq $v.ray.mode "local" }}
          - name: dshm
            mountPath: /dev/shm
          {{- end }}
          {{- with $v.extraVolumeMounts }}
          {{- toYaml . | nindent 10 }}
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
      {{- if eq $v.ray.mode "local" }}
      - name: dshm
        emptyDir:
          medium: Memory
          sizeLimit: {{ $v.ray.shmSizeLimit }}
      {{- end }}
      {{- with $v.extraVolumes }}
      {{- toYaml . | nindent 6 }}
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

{{/*
The template of one Ray pod of a RayJob: pgx_core/render.py `_ray_pod`, in Helm. KubeRay supplies
the container's command (`ray start …`). Call with (dict "root" $ "ctx" $ctx "role" "head|worker|submitter"
"resources" $r "shm" true|false "spec" true|false).
*/}}
{{- define "pgx.rayPod" -}}
{{- $root := .root }}
{{- $v := $root.Values -}}
metadata:
  labels:
    {{- include "pgx.labels" $root | nindent 4 }}
    app.kubernetes.io/component: ray-{{ .role }}
    pgx.io/run-name: {{ .ctx.schedule.runSpec.metadata.name }}
    {{- with $v.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with $v.podAnnotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  {{- if eq .role "submitter" }}
  restartPolicy: Never
  {{- end }}
  serviceAccountName: {{ include "pgx.serviceAccountName" $root }}
  automountServiceAccountToken: false
  enableServiceLinks: false
  {{- with $v.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  {{- with $v.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- include "pgx.podSecurity" $root | nindent 4 }}
  containers:
    - name: ray-{{ .role }}
      image: {{ include "pgx.image" $root }}
      imagePullPolicy: {{ $v.image.pullPolicy }}
      env:
        {{- include "pgx.baseEnv" $root | nindent 8 }}
      resources:
        {{- toYaml .resources | nindent 8 }}
      securityContext:
        {{- include "pgx.containerSecurity" $root | nindent 8 }}
      volumeMounts:
        - name: tmp
          mountPath: /tmp
        {{- if .shm }}
        - name: dshm
          mountPath: /dev/shm
        {{- end }}
        {{- if .spec }}
        - name: spec
          mountPath: /etc/pgx
          readOnly: true
        {{- end }}
        {{- with $v.extraVolumeMounts }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
  volumes:
    - name: tmp
      emptyDir:
        sizeLimit: {{ $v.tmp.sizeLimit }}
    {{- if .shm }}
    - name: dshm
      emptyDir:
        medium: Memory
        sizeLimit: {{ $v.ray.shmSizeLimit }}
    {{- end }}
    {{- if .spec }}
    - name: spec
      configMap:
        name: {{ include "pgx.scheduleName" .ctx }}
        items:
          - key: spec.yaml
            path: spec.yaml
    {{- end }}
    {{- with $v.extraVolumes }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with $v.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}

{{/* Environment of a Ray container: the read-only root's redirects to /tmp, then extraEnv. */}}
{{- define "pgx.baseEnv" -}}
- name: HOME
  value: /tmp
- name: TMPDIR
  value: /tmp
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Restricted Pod Security for a pod: non-root, the default seccomp profile. */}}
{{- define "pgx.podSecurity" -}}
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser }}
runAsGroup: {{ .Values.securityContext.runAsGroup }}
fsGroup: {{ .Values.securityContext.fsGroup }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Restricted Pod Security for one container: non-root, no escalation, no capabilities, read-only root. */}}
{{- define "pgx.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser }}
runAsGroup: {{ .Values.securityContext.runAsGroup }}
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/*
The RayJob spec of one scheduled run: pgx_core/render.py `rayjob_spec`, in Helm; tests/chart
compares the two. Call with (dict "root" $ "schedule" $s).
*/}}
{{- define "pgx.rayJobSpec" -}}
{{- $root := .root }}
{{- $s := .schedule }}
{{- $v := $root.Values }}
{{- $w := $v.ray.workers }}
{{- $autoscale := ne (int $w.minReplicas) (int $w.maxReplicas) -}}
entrypoint: {{ join " " (concat (list "pgx" "run" "/etc/pgx/spec.yaml") ($s.extraArgs | default list)) | quote }}
shutdownAfterJobFinishes: true
ttlSecondsAfterFinished: {{ $v.ray.rayJob.ttlSecondsAfterFinished }}
activeDeadlineSeconds: {{ default $v.job.activeDeadlineSeconds $s.activeDeadlineSeconds }}
submitterPodTemplate:
  {{- $submitter := dict "requests" (dict "cpu" "200m" "memory" "256Mi") "limits" (dict "cpu" "200m" "memory" "256Mi") }}
  {{- include "pgx.rayPod" (dict "root" $root "ctx" . "role" "submitter" "resources" $submitter "shm" false "spec" false) | nindent 2 }}
rayClusterSpec:
  rayVersion: {{ index $root.Chart.Annotations "pgx.io/ray-version" | quote }}
  # KubeRay makes a Secret with the cluster's token and gives it to every Ray pod and the submitter.
  authOptions:
    mode: {{ $v.ray.rayJob.authMode }}
  {{- if $autoscale }}
  # KubeRay adds its autoscaler as a second container of the head pod: same restrictions.
  enableInTreeAutoscaling: true
  autoscalerOptions:
    idleTimeoutSeconds: {{ $w.idleTimeoutSeconds }}
    env:
      {{- include "pgx.baseEnv" $root | nindent 6 }}
    resources:
      requests:
        cpu: 500m
        memory: 512Mi
      limits:
        cpu: 500m
        memory: 512Mi
    securityContext:
      {{- include "pgx.containerSecurity" $root | nindent 6 }}
    volumeMounts:
      - name: tmp
        mountPath: /tmp
  {{- end }}
  headGroupSpec:
    # The head schedules and runs the driver; work items go to the workers.
    rayStartParams:
      num-cpus: "0"
      dashboard-host: 0.0.0.0
    template:
      {{- include "pgx.rayPod" (dict "root" $root "ctx" . "role" "head" "resources" $v.ray.head.resources "shm" true "spec" true) | nindent 6 }}
  workerGroupSpecs:
    - groupName: workers
      replicas: {{ $w.replicas }}
      minReplicas: {{ $w.minReplicas }}
      maxReplicas: {{ $w.maxReplicas }}
      rayStartParams: {}
      template:
        {{- include "pgx.rayPod" (dict "root" $root "ctx" . "role" "worker" "resources" (default $w.resources $s.resources) "shm" true "spec" false) | nindent 8 }}
{{- end }}
