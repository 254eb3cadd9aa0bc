{{- define "ricochet.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "ricochet.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "ricochet.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "ricochet.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "ricochet.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ricochet.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "ricochet.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "ricochet.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The port of config.metricsAddr (":9400", "10.0.0.5:9400", "[::]:9400"). */}}
{{- define "ricochet.adminPort" -}}
{{- $port := regexFind "[0-9]+$" (toString .Values.config.metricsAddr) -}}
{{- if not $port -}}
{{- fail (printf "config.metricsAddr = %q: give HOST:PORT or :PORT" (toString .Values.config.metricsAddr)) -}}
{{- end -}}
{{- $port -}}
{{- end -}}

{{/* The interface the groups are joined on: multus's under networking.mode multus. */}}
{{- define "ricochet.iface" -}}
{{- if eq .Values.networking.mode "multus" -}}
{{- .Values.networking.multus.interface -}}
{{- else -}}
{{- .Values.config.mcIface -}}
{{- end -}}
{{- end -}}

{{/* The Secret holding a file-valued secret: {existingSecret, key, value}. */}}
{{- define "ricochet.secretName" -}}
{{- $ctx := index . 0 -}}
{{- $s := index . 1 -}}
{{- $suffix := index . 2 -}}
{{- if $s.existingSecret -}}
{{- $s.existingSecret -}}
{{- else -}}
{{- printf "%s-%s" (include "ricochet.fullname" $ctx) $suffix | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Where the secrets are mounted (read-only, one directory each). */}}
{{- define "ricochet.secretDir" -}}/etc/ricochet/secrets{{- end -}}

{{/*
Checks that fail at `helm template` / `helm install`, before a pod would
exit 2 with the same complaint.
*/}}
{{- define "ricochet.validate" -}}
{{- $c := .Values.config -}}
{{- if not (has .Values.kind (list "DaemonSet" "Deployment")) -}}
{{- fail (printf "kind = %q: DaemonSet or Deployment" .Values.kind) -}}
{{- end -}}
{{- if not (has .Values.networking.mode (list "host" "multus")) -}}
{{- fail (printf "networking.mode = %q: host or multus" .Values.networking.mode) -}}
{{- end -}}
{{- if eq (toString $c.cacheBackend) "aerospike" -}}
{{- fail "config.cacheBackend = aerospike: ricochet has no aerospike backend; use memory, or redis with config.redisAddr" -}}
{{- end -}}
{{- if and (eq (toString $c.cacheBackend) "redis") (not $c.redisAddr) -}}
{{- fail "config.cacheBackend = redis needs config.redisAddr (host:port)" -}}
{{- end -}}
{{- if and $c.cpus $c.cpuMask -}}
{{- fail "config.cpus and config.cpuMask both set: give one of the two" -}}
{{- end -}}
{{- if and $c.proxyEnabled (not $c.upstreamRetryEndpoints) (ne (toString $c.dht.upstreamDiscovery) "dht") -}}
{{- fail "config.proxyEnabled needs config.upstreamRetryEndpoints (or config.dht.upstreamDiscovery = dht)" -}}
{{- end -}}
{{- if and (eq (toString $c.dht.upstreamDiscovery) "dht") (not $c.dht.upstreamKeys) -}}
{{- fail "config.dht.upstreamDiscovery = dht needs config.dht.upstreamKeys: the public keys of the upstream domain's endpoints (each logs its own at start), or [\"any\"] to trust every signer" -}}
{{- end -}}
{{- if and $c.cluster.enabled (not $c.cluster.keySecret.existingSecret) (not $c.cluster.keySecret.value) -}}
{{- fail "config.cluster.enabled needs config.cluster.keySecret.existingSecret (or .value): the 64-hex-digit cluster key" -}}
{{- end -}}
{{- if and $c.upstreamEvents (not $c.upstreamEventsToken.existingSecret) (not $c.upstreamEventsToken.value) -}}
{{- fail "config.upstreamEvents needs config.upstreamEventsToken.existingSecret (or .value): the upstreams' admin token" -}}
{{- end -}}
{{- end -}}

{{/*
The container's environment: every config.* key as the env var ricochet
reads (the reference's names, RICOCHET_* for ricochet's own). Keys left
empty are not rendered, so the binary's default applies. Whole numbers go
through int64: YAML numbers arrive as float64, which would print 1048576
as 1.048576e+06.
*/}}
{{- define "ricochet.env" -}}
{{- $c := .Values.config -}}
{{- $secrets := include "ricochet.secretDir" . -}}
- name: MC_IFACE
  value: {{ include "ricochet.iface" . | quote }}
- name: EGRESS_IFACE
  value: {{ $c.egressIface | default (include "ricochet.iface" .) | quote }}
- name: LISTEN_PORT
  value: {{ $c.listenPort | int64 | quote }}
- name: SHARD_BITS
  value: {{ $c.shardBits | int64 | quote }}
- name: MC_SCOPE
  value: {{ $c.mcScope | quote }}
- name: MC_GROUP_ID
  value: {{ $c.mcGroupId | quote }}
- name: SOURCE_MODE
  value: {{ $c.sourceMode | default "asm" | quote }}
{{- with $c.bindSource }}
- name: BIND_SOURCE
  value: {{ . | quote }}
{{- end }}
{{- with $c.ingressAllow }}
- name: RICOCHET_INGRESS_ALLOW
  value: {{ join "," . | quote }}
{{- end }}
{{- with $c.ssmBootstrap.manifest }}
- name: SSM_BOOTSTRAP_MANIFEST
  value: {{ join "," . | quote }}
{{- end }}
{{- with $c.ssmBootstrap.beacon }}
- name: SSM_BOOTSTRAP_BEACON
  value: {{ join "," . | quote }}
{{- end }}
{{- with $c.ssmBootstrap.subtreeAnnounce }}
- name: SSM_BOOTSTRAP_SUBTREE_ANNOUNCE
  value: {{ join "," . | quote }}
{{- end }}
{{- with $c.ssmPublishersStatic }}
- name: SSM_PUBLISHERS_STATIC
  value: {{ join "," . | quote }}
{{- end }}
{{- with $c.ssmBootstrapRefresh }}
- name: SSM_BOOTSTRAP_REFRESH
  value: {{ . | quote }}
{{- end }}
- name: EGRESS_PORT
  value: {{ $c.egressPort | int64 | quote }}
{{- if kindIs "bool" $c.egressMulticastLoop }}
- name: EGRESS_MULTICAST_LOOP
  value: {{ $c.egressMulticastLoop | quote }}
{{- end }}
- name: DEDUP_WINDOW
  value: {{ $c.dedupWindow | quote }}
{{- if $c.proxyEnabled }}
- name: PROXY_ENABLED
  value: "true"
{{- with $c.upstreamRetryEndpoints }}
- name: UPSTREAM_RETRY_ENDPOINTS
  value: {{ join "," . | quote }}
{{- end }}
- name: PROXY_TIMEOUT
  value: {{ $c.proxyTimeout | quote }}
- name: PROXY_MAX_ENDPOINTS
  value: {{ $c.proxyMaxEndpoints | int64 | quote }}
- name: PROXY_DEDUP_WINDOW
  value: {{ $c.proxyDedupWindow | quote }}
- name: PROXY_QUEUE_DEPTH
  value: {{ $c.proxyQueue | int64 | quote }}
{{- end }}
- name: NACK_PORT
  value: {{ $c.nackPort | int64 | quote }}
{{- with $c.nackAddr }}
- name: NACK_ADDR
  value: {{ . | quote }}
{{- end }}
{{- if not (or $c.cpus $c.cpuMask) }}
{{- /* With a CPU list the workers are its CPUs; ricochet ignores it then. */}}
- name: NACK_WORKERS
  value: {{ $c.nackWorkers | int64 | quote }}
{{- end }}
- name: CACHE_BACKEND
  value: {{ $c.cacheBackend | quote }}
{{- with $c.redisAddr }}
- name: REDIS_ADDR
  value: {{ . | quote }}
{{- end }}
{{- if $c.aerospikeHosts }}
- name: AEROSPIKE_HOSTS
  value: {{ $c.aerospikeHosts | quote }}
- name: AEROSPIKE_NAMESPACE
  value: {{ $c.aerospikeNamespace | quote }}
- name: AEROSPIKE_SET
  value: {{ $c.aerospikeSet | quote }}
{{- end }}
- name: CACHE_DIAL_TIMEOUT
  value: {{ $c.cacheDialTimeout | quote }}
- name: CACHE_OP_TIMEOUT
  value: {{ $c.cacheOpTimeout | quote }}
- name: CACHE_TTL
  value: {{ $c.cacheTtl | quote }}
- name: CACHE_TTL_TX
  value: {{ $c.cacheTtlTx | quote }}
- name: CACHE_TTL_BLOCK
  value: {{ $c.cacheTtlBlock | quote }}
- name: CACHE_TTL_SUBTREE
  value: {{ $c.cacheTtlSubtree | quote }}
- name: CACHE_TTL_ANCHOR
  value: {{ $c.cacheTtlAnchor | quote }}
- name: CACHE_TTL_BEEF
  value: {{ $c.cacheTtlBeef | default "60s" | quote }}
- name: BEEF_ENABLED
  value: {{ $c.beefEnabled | default false | quote }}
- name: BEEF_SHARD_BITS
  {{- /* int, not default: default would treat an explicit 0 as unset. */}}
  value: {{ $c.beefShardBits | int64 | quote }}
- name: CACHE_MAX_KEYS
  value: {{ $c.cacheMaxKeys | int64 | quote }}
- name: RL_IP_RATE
  value: {{ $c.rlIpRate | quote }}
- name: RL_IP_BURST
  value: {{ $c.rlIpBurst | int64 | quote }}
- name: RL_CHAIN_RATE
  value: {{ $c.rlChainRate | int64 | quote }}
- name: RL_CHAIN_WINDOW
  value: {{ $c.rlChainWindow | quote }}
- name: RL_SEQUENCE_MAX
  value: {{ $c.rlSequenceMax | int64 | quote }}
- name: RL_SEQUENCE_WINDOW
  value: {{ $c.rlSequenceWindow | quote }}
- name: RL_GROUP_RATE
  value: {{ $c.rlGroupRate | quote }}
- name: RL_GROUP_BURST
  value: {{ $c.rlGroupBurst | int64 | quote }}
- name: RL_THROTTLE_RESPONSE
  value: {{ $c.rlThrottleResponse | default false | quote }}
- name: BEACON_ENABLED
  value: {{ $c.beaconEnabled | quote }}
- name: BEACON_TIER
  value: {{ $c.beaconTier | int64 | quote }}
- name: BEACON_PREFERENCE
  value: {{ $c.beaconPreference | int64 | quote }}
- name: BEACON_INTERVAL
  value: {{ $c.beaconInterval | quote }}
- name: BEACON_SCOPE
  value: {{ $c.beaconScope | quote }}
- name: BEACON_FLAGS_UNICAST
  value: {{ $c.beaconFlagsUnicast | quote }}
- name: BEACON_FLAGS_MULTICAST
  value: {{ $c.beaconFlagsMulticast | quote }}
- name: BEACON_FLAGS_DRAINING
  value: {{ $c.beaconFlagsDraining | quote }}
- name: SUPPRESS_ACK
  value: {{ $c.suppressAck | quote }}
- name: SUPPRESS_MISS
  value: {{ $c.suppressMiss | quote }}
- name: SUBTREE_DATA_ENABLED
  value: {{ $c.subtreeDataEnabled | quote }}
- name: DRAIN_TIMEOUT
  value: {{ $c.drainTimeout | quote }}
- name: DEBUG
  value: {{ $c.debug | quote }}
- name: LOG_FORMAT
  value: {{ $c.logFormat | quote }}
- name: LOG_LEVEL
  value: {{ $c.logLevel | quote }}
{{- if $c.traceSampling }}
- name: TRACE_SAMPLING
  value: {{ $c.traceSampling | quote }}
{{- end }}
- name: METRICS_ADDR
  value: {{ $c.metricsAddr | quote }}
{{- with $c.instanceId }}
- name: INSTANCE_ID
  value: {{ . | quote }}
{{- end }}
{{- if $c.otlpEndpoint }}
- name: OTLP_ENDPOINT
  value: {{ $c.otlpEndpoint | quote }}
- name: OTLP_INTERVAL
  value: {{ $c.otlpInterval | quote }}
{{- end }}
{{- with $c.cpus }}
- name: RICOCHET_CPUS
  value: {{ . | quote }}
{{- end }}
{{- with $c.cpuMask }}
- name: RICOCHET_CPU_MASK
  value: {{ . | quote }}
{{- end }}
- name: RICOCHET_BACKEND
  value: {{ $c.backend | default "auto" | quote }}
- name: RICOCHET_URING_BATCH_WAIT
  value: {{ $c.uringBatchWait | default "200us" | quote }}
- name: RICOCHET_CACHE_MAX_BYTES
  value: {{ $c.cacheMaxBytes | quote }}
- name: RICOCHET_MAX_RANGE
  value: {{ $c.maxRange | int64 | quote }}
- name: RICOCHET_BEACON_PORT
  value: {{ $c.beaconPort | int64 | quote }}
{{- with $c.proxyAllow }}
- name: RICOCHET_PROXY_ALLOW
  value: {{ join "," . | quote }}
{{- end }}
{{- with $c.upstreamEvents }}
- name: RICOCHET_UPSTREAM_EVENTS
  value: {{ join "," . | quote }}
- name: RICOCHET_UPSTREAM_EVENTS_TOKEN_FILE
  value: {{ printf "%s/upstream-events-token/%s" $secrets $c.upstreamEventsToken.key | quote }}
{{- end }}
- name: RICOCHET_MAX_DOWNSTREAMS
  value: {{ $c.maxDownstreams | int64 | quote }}
- name: RICOCHET_WARMUP_TIMEOUT
  value: {{ $c.warmupTimeout | quote }}
- name: RICOCHET_DEBUG_PUBLIC
  value: {{ $c.debugPublic | quote }}
{{- if $c.ipv4Lab }}
- name: RICOCHET_IPV4_LAB
  value: "true"
{{- end }}
- name: RICOCHET_MAX_DATAGRAM
  value: {{ $c.maxDatagram | int64 | quote }}
{{- if or $c.adminToken.existingSecret $c.adminToken.value }}
- name: RICOCHET_ADMIN_TOKEN_FILE
  value: {{ printf "%s/admin-token/%s" $secrets $c.adminToken.key | quote }}
{{- end }}
{{- if $c.cluster.enabled }}
- name: RICOCHET_CLUSTER_KEY_FILE
  value: {{ printf "%s/cluster-key/%s" $secrets $c.cluster.keySecret.key | quote }}
- name: RICOCHET_GOSSIP_PORT
  value: {{ $c.cluster.gossipPort | int64 | quote }}
{{- with $c.cluster.gossipPeers }}
- name: RICOCHET_GOSSIP_PEERS
  value: {{ join "," . | quote }}
{{- end }}
{{- end }}
{{- if $c.dht.enabled }}
- name: RICOCHET_DHT_ENABLED
  value: "true"
- name: RICOCHET_DHT_PORT
  value: {{ $c.dht.port | int64 | quote }}
{{- with $c.dht.bootstrap }}
- name: RICOCHET_DHT_BOOTSTRAP
  value: {{ join "," . | quote }}
{{- end }}
{{- with $c.dht.domain }}
- name: RICOCHET_DOMAIN
  value: {{ . | quote }}
{{- end }}
- name: RICOCHET_UPSTREAM_DISCOVERY
  value: {{ $c.dht.upstreamDiscovery | quote }}
{{- with $c.dht.upstreamDomain }}
- name: RICOCHET_UPSTREAM_DOMAIN
  value: {{ . | quote }}
{{- end }}
{{- with $c.dht.upstreamKeys }}
- name: RICOCHET_UPSTREAM_KEYS
  value: {{ join "," . | quote }}
{{- end }}
- name: RICOCHET_DHT_REFRESH
  value: {{ $c.dht.refresh | quote }}
{{- if $c.dht.persistIdentity }}
- name: RICOCHET_NODE_KEY_FILE
  value: /var/lib/ricochet/node.key
- name: RICOCHET_DHT_PEER_CACHE
  value: /var/lib/ricochet/dht-peers
{{- end }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Multus's network selection annotation (a JSON list of one attachment). */}}
{{- define "ricochet.multusNetworks" -}}
{{- $m := .Values.networking.multus -}}
{{- $net := dict "name" $m.networkName "namespace" (default .Release.Namespace $m.namespace) "interface" $m.interface -}}
{{- if $m.fabricIPv6 -}}
{{- $_ := set $net "ips" (list $m.fabricIPv6) -}}
{{- end -}}
{{- list $net | toJson -}}
{{- end -}}
