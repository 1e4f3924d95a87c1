{{/*
Helpers shared by the templates. Every object mirrors launcher/render/*.py, which renders the same objects
from the same job values; tests/test_chart.py compares the two object by object. Strings are always
emitted through `quote` or `toJson`, so no value can change a manifest's structure.
*/}}

{{/* The job's name: the release's (or fullnameOverride), never the job file's `name`, so two releases of one job file
     live side by side; a DNS-1035 label of at most 45 characters, as the launcher requires (convit/jobspec). */}}
{{- define "convit-train.fullname" -}}
{{- $name := .Values.fullnameOverride | default .Release.Name -}}
{{- if or (gt (len $name) 45) (not (regexMatch "^[a-z]([-a-z0-9]*[a-z0-9])?$" $name)) -}}
{{- fail (printf "job name %q (the release name, or fullnameOverride) must be a DNS-1035 label of at most 45 characters: lower-case letters, digits and '-', starting with a letter" $name) -}}
{{- end -}}
{{- $name -}}
{{- end }}

{{- define "convit-train.selectorLabels" -}}
app.kubernetes.io/name: convit-train
app.kubernetes.io/instance: {{ include "convit-train.fullname" . | quote }}
{{- end }}

{{- define "convit-train.labels" -}}
{{ include "convit-train.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component | quote }}
app.kubernetes.io/part-of: convit-train
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service | quote }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | quote }}
{{- end }}

{{- define "convit-train.metadata" -}}
name: {{ .name | quote }}
namespace: {{ .root.Release.Namespace | quote }}
labels:
  {{- include "convit-train.labels" . | nindent 2 }}
  {{- with .extraLabels }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end }}

{{/* The MindSpore cluster variables (convit/cluster/contract.py). */}}
{{- /* Indexed and Volcano Jobs only: the ascend-operator appends its own to AscendJob pods. */}}
{{- define "convit-train.clusterEnv" -}}
- name: MS_WORKER_NUM
  value: {{ mul .Values.cluster.pods .Values.cluster.npus_per_pod | toString | quote }}
- name: MS_LOCAL_WORKER
  value: {{ .Values.cluster.npus_per_pod | toString | quote }}
- name: MS_SCHED_HOST
  value: {{ .schedHost | quote }}
- name: MS_SCHED_PORT
  value: {{ .Values.cluster.master_port | toString | quote }}
{{- end }}

{{- define "convit-train.podTemplate" -}}
{{- $v := .root.Values -}}
{{- $c := $v.cluster -}}
metadata:
  labels:
    {{- with $c.pod_labels }}
    {{- range $key, $value := . }}
    {{ $key | quote }}: {{ $value | quote }}
    {{- end }}
    {{- end }}
    {{- include "convit-train.labels" (dict "root" .root "component" .component) | nindent 4 }}
    {{- with .extraLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with $c.pod_annotations }}
  annotations:
    {{- range $key, $value := . }}
    {{ $key | quote }}: {{ $value | quote }}
    {{- end }}
  {{- end }}
spec:
  {{- /* AscendJob templates leave it out: the ascend-operator overwrites it with the replica's (and warns). */}}
  {{- with .restartPolicy }}
  restartPolicy: {{ . | quote }}
  {{- end }}
  terminationGracePeriodSeconds: {{ $c.termination_grace_seconds | int }}
  automountServiceAccountToken: false
  securityContext:
    runAsNonRoot: true
    runAsUser: {{ $c.run_as_user | int }}
    runAsGroup: {{ $c.device_group | int }}
    fsGroup: {{ $c.device_group | int }}
    supplementalGroups: [{{ $c.device_group | int }}]
    seccompProfile:
      type: RuntimeDefault
  containers:
    - name: {{ .containerName | default "ascend" }}
      image: {{ $c.image | quote }}
      imagePullPolicy: {{ $c.image_pull_policy | quote }}
      command: ["python", "-m", "convit.cluster"]
      args: ["--job", "/etc/convit/job.json"]
      env:
        {{- with .env }}
        {{- . | nindent 8 }}
        {{- end }}
        {{- /* CPU for the AscendJob's Scheduler pod: MindSpore schedules over mccl on any device (see common.py). */}}
        - name: CONVIT_DEVICE
          value: {{ if .npus }}"Ascend"{{ else }}"CPU"{{ end }}
        {{- /* Overflow detection of fixed-loss-scale O2 on Atlas A2: see convit/cluster/contract.py. */}}
        - name: MS_ASCEND_CHECK_OVERFLOW_MODE
          value: "INFNAN_MODE"
        - name: MS_TOPO_TIMEOUT
          value: {{ $c.cluster_timeout | toString | quote }}
        - name: CONVIT_CACHE_DIR
          value: "/var/cache/convit"
        - name: HOME
          value: "/tmp"
        - name: PYTHONUNBUFFERED
          value: "1"
        - name: CONVIT_S3_ADDRESSING_STYLE
          value: {{ $v.storage.addressing_style | quote }}
        {{- if $v.storage.endpoint }}
        - name: AWS_ENDPOINT_URL_S3
          value: {{ $v.storage.endpoint | quote }}
        {{- end }}
        {{- if $v.storage.region }}
        - name: AWS_REGION
          value: {{ $v.storage.region | quote }}
        {{- end }}
        {{- range list "AWS_ACCESS_KEY_ID" "AWS_SECRET_ACCESS_KEY" }}
        - name: {{ . }}
          valueFrom:
            secretKeyRef:
              name: {{ $v.storage.secret | quote }}
              key: {{ . }}
        {{- end }}
        {{- range $c.extra_env }}
        - name: {{ .name | quote }}
          value: {{ .value | quote }}
        {{- end }}
      resources:
        {{- range list "requests" "limits" }}
        {{ . }}:
          {{- if $.npus }}
          cpu: {{ $c.cpu | quote }}
          memory: {{ $c.memory | quote }}
          {{ $c.npu_resource | quote }}: {{ $c.npus_per_pod | toString | quote }}
          {{- else }}
          cpu: {{ $c.scheduler_cpu | quote }}
          memory: {{ $c.scheduler_memory | quote }}
          {{- end }}
        {{- end }}
      {{- /* Rank 0's Prometheus /metrics on every NPU pod (convit/train/metrics.py); the AscendJob Scheduler's port. */}}
      {{- if or .ports .npus }}
      ports:
        {{- with .ports }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
        {{- if .npus }}
        - name: metrics
          containerPort: 9100
          protocol: TCP
        {{- end }}
      {{- end }}
      volumeMounts:
        - name: job
          mountPath: /etc/convit
          readOnly: true
        - name: dshm
          mountPath: /dev/shm
        - name: cache
          mountPath: /var/cache/convit
        - name: tmp
          mountPath: /tmp
        {{- if .npus }}
        - name: ascend-driver
          mountPath: /usr/local/Ascend/driver
          readOnly: true
        {{- end }}
        {{- range $c.extra_volumes }}
        - name: {{ .name | quote }}
          mountPath: {{ .mount_path | quote }}
          readOnly: {{ ternary .read_only true (hasKey . "read_only") }}
        {{- end }}
      securityContext:
        allowPrivilegeEscalation: false
        privileged: false
        readOnlyRootFilesystem: true
        runAsNonRoot: true
        capabilities:
          drop: ["ALL"]
      {{- /* Rank 0's last progress line and result (convit/train/termination.py), else the end of the log. */}}
      terminationMessagePolicy: FallbackToLogsOnError
  volumes:
    - name: job
      configMap:
        name: {{ printf "%s-job" (include "convit-train.fullname" .root) | quote }}
    - name: dshm
      emptyDir:
        medium: Memory
        sizeLimit: {{ $c.shm_size | quote }}
    - name: cache
      emptyDir: {}
    - name: tmp
      emptyDir: {}
    {{- if .npus }}
    - name: ascend-driver
      hostPath:
        path: /usr/local/Ascend/driver
        type: Directory
    {{- end }}
    {{- range $c.extra_volumes }}
    - name: {{ .name | quote }}
      {{- if .pvc }}
      persistentVolumeClaim:
        claimName: {{ .pvc | quote }}
        readOnly: {{ ternary .read_only true (hasKey . "read_only") }}
      {{- else if .config_map }}
      configMap:
        name: {{ .config_map | quote }}
      {{- else if .secret }}
      secret:
        secretName: {{ .secret | quote }}
      {{- else }}
      emptyDir: {}
      {{- end }}
    {{- end }}
  {{- with .subdomain }}
  subdomain: {{ . | quote }}
  {{- end }}
  {{- with $c.service_account }}
  serviceAccountName: {{ . | quote }}
  {{- end }}
  {{- with $c.image_pull_secrets }}
  imagePullSecrets:
    {{- range . }}
    - name: {{ . | quote }}
    {{- end }}
  {{- end }}
  {{- with .schedulerName }}
  schedulerName: {{ . | quote }}
  {{- end }}
  {{- $selector := include "convit-train.nodeSelector" (dict "Values" $v "npus" .npus) | fromYaml }}
  {{- with $selector }}
  nodeSelector:
    {{- range $key, $value := . }}
    {{ $key | quote }}: {{ $value | quote }}
    {{- end }}
  {{- end }}
  {{- with $c.priority_class }}
  priorityClassName: {{ . | quote }}
  {{- end }}
  {{- with $c.tolerations }}
  tolerations:
    {{- range . }}
    - key: {{ .key | quote }}
      operator: {{ .operator | quote }}
      {{- with .value }}
      value: {{ . | quote }}
      {{- end }}
      {{- with .effect }}
      effect: {{ . | quote }}
      {{- end }}
    {{- end }}
  {{- end }}
{{- end }}

{{/* Kueue's labels on a job it admits (job and jobset backends): launcher/workloads/kueue.py */}}
{{- define "convit-train.kueueLabels" -}}
{{- $c := .Values.cluster -}}
{{- if and $c.kueue_priority_class (not $c.kueue_queue) }}
{{- fail "cluster.kueue_priority_class needs cluster.kueue_queue (the LocalQueue to admit the job)" }}
{{- end }}
{{- with $c.kueue_queue }}
kueue.x-k8s.io/queue-name: {{ . | quote }}
{{- end }}
{{- with $c.kueue_priority_class }}
kueue.x-k8s.io/priority-class: {{ . | quote }}
{{- end }}
{{- end }}

{{/* The trainer pod of the trainjob backend, whole: launcher/workloads/trainjob.py full_pod. The TrainJob and the
     ClusterTrainingRuntime are this pod split in two (split_pod). */}}
{{- define "convit-train.trainerPod" -}}
{{- $name := include "convit-train.fullname" . }}
{{- $env := include "convit-train.clusterEnv" (dict "Values" .Values "schedHost" (printf "%s-node-0-0.%s" $name $name)) }}
{{- $rank := "- name: MS_NODE_RANK\n  valueFrom:\n    fieldRef:\n      fieldPath: metadata.annotations['batch.kubernetes.io/job-completion-index']" }}
{{- include "convit-train.podTemplate" (dict "root" . "component" "worker" "npus" true "restartPolicy" "Never" "schedulerName" "volcano" "containerName" "node" "env" (printf "%s\n%s" $rank $env)) }}
{{- end }}

{{/* MindCluster's chip labels (launcher/render/placement.py CHIPS): key "ring" (ring-controller.atlas) or
     "accelerator_type" (the accelerator-type node label), for .Values.cluster.chip. */}}
{{- define "convit-train.chip" -}}
{{- $chips := dict "910a" (dict "ring" "ascend-910" "accelerator_type" "module") "910b" (dict "ring" "ascend-910b" "accelerator_type" "module-910b-8") -}}
{{- index (index $chips .Values.cluster.chip) .key -}}
{{- end }}

{{/* A pod's node selector (placement.node_selector): NPU pods the chip's accelerator-type under
     cluster.node_selector; a pod without NPUs only the architecture labels of cluster.node_selector. */}}
{{- define "convit-train.nodeSelector" -}}
{{- $c := .Values.cluster -}}
{{- if .npus -}}
{{- $out := dict "accelerator-type" (include "convit-train.chip" (dict "Values" .Values "key" "accelerator_type")) -}}
{{- toYaml (merge (deepCopy $c.node_selector) $out) -}}
{{- else -}}
{{- $out := dict -}}
{{- range $key, $value := $c.node_selector }}{{ if has $key (list "kubernetes.io/arch" "host-arch") }}{{ $_ := set $out $key $value }}{{ end }}{{ end -}}
{{- toYaml $out -}}
{{- end -}}
{{- end }}

{{/* Volcano and MindCluster job-level placement settings only the volcano and ascendjob backends have. */}}
{{- define "convit-train.refuseVolcanoPlacement" -}}
{{- $c := .Values.cluster -}}
{{- range $key := list "network_topology_mode" "tor_affinity" }}
{{- if index $c $key }}
{{- fail (printf "cluster.%s cannot be used on the %s backend: it is a Volcano/MindCluster job setting (use the volcano or ascendjob backend)" $key $c.backend) }}
{{- end }}
{{- end }}
{{- end }}

{{/* The server pod's spec (launcher/serving/pod.py server_pod_spec): python -m convit.serve with the training pods'
     security settings, probes on the Open Inference Protocol's health endpoints, NPUs when serve.npus says so. */}}
{{- define "convit-train.serverPodSpec" -}}
{{- $v := .root.Values -}}
{{- $c := $v.cluster -}}
{{- $s := $v.serve -}}
terminationGracePeriodSeconds: 60
automountServiceAccountToken: false
securityContext:
  runAsNonRoot: true
  runAsUser: {{ $c.run_as_user | int }}
  runAsGroup: {{ $c.device_group | int }}
  fsGroup: {{ $c.device_group | int }}
  supplementalGroups: [{{ $c.device_group | int }}]
  seccompProfile:
    type: RuntimeDefault
containers:
  - name: {{ .containerName }}
    image: {{ $c.image | quote }}
    imagePullPolicy: {{ $c.image_pull_policy | quote }}
    command: ["python", "-m", "convit.serve"]
    args: ["--weights", {{ $s.weights | quote }}, "--model", {{ $v.model.name | quote }}, "--port", "8080", "--max-batch", {{ $s.max_batch | toString | quote }}, "--max-wait-ms", {{ $s.max_wait_ms | toString | quote }}]
    env:
      - name: CONVIT_DEVICE
        value: {{ if $s.npus }}"Ascend"{{ else }}"CPU"{{ end }}
      - name: CONVIT_CACHE_DIR
        value: "/var/cache/convit"
      - name: HOME
        value: "/tmp"
      - name: PYTHONUNBUFFERED
        value: "1"
      - name: CONVIT_S3_ADDRESSING_STYLE
        value: {{ $v.storage.addressing_style | quote }}
      {{- if $v.storage.endpoint }}
      - name: AWS_ENDPOINT_URL_S3
        value: {{ $v.storage.endpoint | quote }}
      {{- end }}
      {{- if $v.storage.region }}
      - name: AWS_REGION
        value: {{ $v.storage.region | quote }}
      {{- end }}
      {{- range list "AWS_ACCESS_KEY_ID" "AWS_SECRET_ACCESS_KEY" }}
      - name: {{ . }}
        valueFrom:
          secretKeyRef:
            name: {{ $v.storage.secret | quote }}
            key: {{ . }}
      {{- end }}
      {{- range $c.extra_env }}
      - name: {{ .name | quote }}
        value: {{ .value | quote }}
      {{- end }}
    ports:
      - name: http
        containerPort: 8080
        protocol: TCP
    resources:
      {{- range list "requests" "limits" }}
      {{ . }}:
        cpu: {{ $s.cpu | quote }}
        memory: {{ $s.memory | quote }}
        {{- if $s.npus }}
        {{ $c.npu_resource | quote }}: {{ $s.npus | toString | quote }}
        {{- end }}
      {{- end }}
    startupProbe:
      httpGet: {path: /v2/health/live, port: 8080}
      periodSeconds: 5
      failureThreshold: 120
    readinessProbe:
      httpGet: {path: /v2/health/ready, port: 8080}
      periodSeconds: 5
      failureThreshold: 3
    livenessProbe:
      httpGet: {path: /v2/health/live, port: 8080}
      periodSeconds: 10
      failureThreshold: 3
    volumeMounts:
      - name: tmp
        mountPath: /tmp
      - name: cache
        mountPath: /var/cache/convit
      {{- if $s.npus }}
      - name: ascend-driver
        mountPath: /usr/local/Ascend/driver
        readOnly: true
      {{- end }}
    securityContext:
      allowPrivilegeEscalation: false
      privileged: false
      readOnlyRootFilesystem: true
      runAsNonRoot: true
      capabilities:
        drop: ["ALL"]
    terminationMessagePolicy: FallbackToLogsOnError
volumes:
  - name: tmp
    emptyDir: {}
  - name: cache
    emptyDir: {}
  {{- if $s.npus }}
  - name: ascend-driver
    hostPath:
      path: /usr/local/Ascend/driver
      type: Directory
  {{- end }}
{{- with $c.service_account }}
serviceAccountName: {{ . | quote }}
{{- end }}
{{- with $c.image_pull_secrets }}
imagePullSecrets:
  {{- range . }}
  - name: {{ . | quote }}
  {{- end }}
{{- end }}
{{- if $s.npus }}
{{- $selector := include "convit-train.nodeSelector" (dict "Values" $v "npus" true) | fromYaml }}
nodeSelector:
  {{- range $key, $value := $selector }}
  {{ $key | quote }}: {{ $value | quote }}
  {{- end }}
{{- end }}
{{- with $c.priority_class }}
priorityClassName: {{ . | quote }}
{{- end }}
{{- with $c.tolerations }}
tolerations:
  {{- range . }}
  - key: {{ .key | quote }}
    operator: {{ .operator | quote }}
    {{- with .value }}
    value: {{ . | quote }}
    {{- end }}
    {{- with .effect }}
    effect: {{ . | quote }}
    {{- end }}
  {{- end }}
{{- end }}
{{- end }}

{{/* The server pods' labels: cluster.pod_labels under ours (component: server). */}}
{{- define "convit-train.serverLabels" -}}
{{- range $key, $value := .Values.cluster.pod_labels }}
{{ $key | quote }}: {{ $value | quote }}
{{- end }}
{{ include "convit-train.labels" (dict "root" . "component" "server") }}
{{- end }}
