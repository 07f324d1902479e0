#!/usr/bin/env bash
# helm lint --strict and helm template for default, CPU and GPU values and with the security
# settings (TLS, cert-manager, API keys, NetworkPolicies) changed; values.schema.json rejects bad
# values and typos; the committed plain manifests (deploy/k8s/manifests) are up to date.
# A tool that cannot be installed is a failure (exit 1), never a skip: CI must not lose the test.
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "${here}/../.." && pwd)"
"${here}/install_tools.sh" >/dev/null || { echo "FAIL: deploy/tests/install_tools.sh could not install the tools"; exit 1; }
helm="${MOE_TOOLS_DIR:-${root}/build/tools}/bin/helm"
chart="${root}/deploy/k8s/moe-serving"

tmp="$(mktemp -d)"
trap 'rm -rf "${tmp}"' EXIT
passed=0 failed=0
expect() {  # expect ok|fail WHAT cmd...
  local want="$1" what="$2"; shift 2
  local got=ok
  "$@" >"${tmp}/out" 2>&1 || got=fail
  if [[ "${got}" == "${want}" ]]; then passed=$((passed + 1)); else
    failed=$((failed + 1)); echo "FAIL: ${what} (wanted ${want}, got ${got})"; cat "${tmp}/out"; fi
}

for values in "" values-cpu.yaml values-gpu.yaml; do
  args=()
  [[ -n "${values}" ]] && args=(-f "${chart}/${values}")
  expect ok "helm lint --strict ${values:-default}" "${helm}" lint --strict "${chart}" "${args[@]}"
  expect ok "helm template ${values:-default}" "${helm}" template moe "${chart}" "${args[@]}"
done
# The schema catches typos and bad values, and the templates refuse an impossible model source.
expect fail "schema rejects an unknown key" "${helm}" template moe "${chart}" --set router.replica=3
expect fail "schema rejects a bad transport" "${helm}" template moe "${chart}" --set cluster.transport=tcp
expect fail "schema rejects zero expert workers" "${helm}" template moe "${chart}" --set expert.replicas=0
expect fail "existingClaim needs a claim name" "${helm}" template moe "${chart}" --set model.source=existingClaim
# The security settings: lint with each on, and typos in their keys are refused.
expect ok "helm lint --strict with TLS off" "${helm}" lint --strict "${chart}" --set tls.enabled=false
expect ok "helm lint --strict with cert-manager, API keys, public TLS, metricsFrom" "${helm}" lint --strict "${chart}" \
  --set tls.certManager.issuerRef.name=moe-ca --set router.apiKeys.existingSecret=moe-keys \
  --set router.publicTls.existingSecret=moe-public-tls \
  --set 'networkPolicy.metricsFrom[0].namespaceSelector.matchLabels.name=monitoring'
for typo in tls.enable=false tls.secrets.attention=x tls.secrets.expertWorkers=x tls.certManager.issuer.name=x \
    tls.certManager.issuerRef.nmae=x networkPolicy.enable=false router.apiKeys.secret=x \
    router.apiKeys.existingSecrets=x router.publicTLS.existingSecret=x router.publicTls.secretName=x \
    'networkPolicy.metricsFrom[0].namespaceSelecter.matchLabels.a=b' ports.healthz=8082; do
  expect fail "schema rejects the typo ${typo}" "${helm}" template moe "${chart}" --set "${typo}"
done
expect fail "schema rejects a non-boolean tls.enabled" "${helm}" template moe "${chart}" --set-string tls.enabled=yes
expect fail "schema rejects an issuer kind without a name" "${helm}" template moe "${chart}" --set tls.certManager.issuerRef.kind=ClusterIssuer
expect fail "schema rejects a Secret name that is no DNS name" "${helm}" template moe "${chart}" --set router.apiKeys.existingSecret=My_Keys
expect fail "schema rejects a bad certificate duration" "${helm}" template moe "${chart}" --set tls.certManager.duration=1year
expect ok "TLS off renders MOE_INSECURE=true" bash -c \
  "'${helm}' template moe '${chart}' --set tls.enabled=false | grep -q 'MOE_INSECURE: \"true\"'"
expect fail "TLS on renders no MOE_INSECURE" bash -c "'${helm}' template moe '${chart}' | grep -q MOE_INSECURE"
expect ok "startup budget rounds up to whole periods" bash -c \
  "'${helm}' template moe '${chart}' --set attention.startupBudgetSeconds=95 --set attention.startupPeriodSeconds=10 \
   | grep -A6 'service: startup' | grep -q 'failureThreshold: 10'"
# make_tls_secrets.sh: a CA and one certificate per role that the services accept (chain, CN = role,
# SAN moe-cluster.internal, server and client auth), in the Secrets the chart mounts by default.
check_tls_secrets() {
  local dir="${tmp}/tls" role names
  "${root}/deploy/k8s/make_tls_secrets.sh" "${dir}" 2>/dev/null || return 1
  for role in router attention-worker expert-worker operator; do
    openssl verify -CAfile "${dir}/ca.crt" -purpose sslserver "${dir}/${role}.crt" >/dev/null || return 1
    openssl verify -CAfile "${dir}/ca.crt" -purpose sslclient "${dir}/${role}.crt" >/dev/null || return 1
    openssl x509 -in "${dir}/${role}.crt" -noout -subject -nameopt RFC2253 | grep -qx "subject=CN=moe-${role}" || return 1
    openssl x509 -in "${dir}/${role}.crt" -noout -ext subjectAltName | grep -qx ' *DNS:moe-cluster.internal' || return 1
  done
  names="$(grep -A4 '^kind: Secret' "${dir}/secrets.yaml" | sed -n 's/^  name: //p' | sort)"
  [[ "${names}" == "$("${helm}" template moe "${chart}" | sed -n 's/^ *secretName: \(.*-tls\)$/\1/p' | sort -u)" ]] || return 1
  [[ "$(grep -c '^  ca.crt: ' "${dir}/secrets.yaml")" == 3 ]]
}
expect ok "make_tls_secrets.sh makes certificates per role in the chart's Secrets" check_tls_secrets
expect fail "make_tls_secrets.sh refuses a bad --fullname" "${root}/deploy/k8s/make_tls_secrets.sh" "${tmp}/bad" --fullname Bad_Name
expect ok "attention.kvCacheGiB reaches MOE_KV_CACHE_GIB" bash -c \
  "'${helm}' template moe '${chart}' --set attention.kvCacheGiB=16 | grep -q 'MOE_KV_CACHE_GIB: \"16\"'"
expect fail "schema rejects a zero KV cache" "${helm}" template moe "${chart}" --set attention.kvCacheGiB=0
expect ok "expert.copiesPerShard reaches MOE_EXPERT_REPLICAS" bash -c \
  "'${helm}' template moe '${chart}' --set expert.copiesPerShard=2 | grep -q 'MOE_EXPERT_REPLICAS: \"2\"'"
expect fail "copiesPerShard that does not divide the expert workers is refused" "${helm}" template moe "${chart}" \
  --set expert.replicas=4 --set expert.copiesPerShard=3
expect ok "expert.extraExpertBudgetBytes reaches MOE_EXTRA_EXPERT_BUDGET_BYTES in whole bytes" bash -c \
  "'${helm}' template moe '${chart}' --set expert.extraExpertBudgetBytes=4294967296 | grep -q 'MOE_EXTRA_EXPERT_BUDGET_BYTES: \"4294967296\"'"
expect fail "a negative expert.extraExpertBudgetBytes is refused" "${helm}" template moe "${chart}" \
  --set expert.extraExpertBudgetBytes=-1
# Elastic on cost: the router finds attention workers through the headless Service; the KEDA
# ScaledObject (off by default) scales the attention StatefulSet on the cost-per-request rule.
expect ok "router discovers attention workers through the headless Service" bash -c \
  "'${helm}' template moe '${chart}' --namespace ns | grep -q 'MOE_ATTENTION_WORKERS_DNS: \"moe-moe-serving-attention.ns.svc:50051\"' \
   && '${helm}' template moe '${chart}' | grep -q -- '--attention_workers_dns=\$(MOE_ATTENTION_WORKERS_DNS)'"
expect fail "no ScaledObject by default" bash -c "'${helm}' template moe '${chart}' | grep -q 'kind: ScaledObject'"
expect ok "helm lint --strict with attention autoscaling" "${helm}" lint --strict "${chart}" --set attention.autoscaling.enabled=true
check_scaledobject() {
  local out
  out="$("${helm}" template moe "${chart}" --namespace ns --set attention.autoscaling.enabled=true \
    --set attention.autoscaling.maxReplicas=6 --set-json attention.autoscaling.costPerRequestDollars=0.004)" || return 1
  grep -q 'kind: ScaledObject' <<<"${out}" || return 1
  grep -A3 'scaleTargetRef:' <<<"${out}" | grep -q 'kind: StatefulSet' || return 1
  grep -q 'maxReplicaCount: 6' <<<"${out}" || return 1
  grep -q 'moe:cost_per_request_dollars:rate5m{namespace="ns"}' <<<"${out}" || return 1
  grep -q '\* 0.004$' <<<"${out}" || return 1
  # Ranks go up to maxReplicas - 1, and KEDA owns the attention replicas.
  grep -q 'MOE_NUM_ATTENTION_WORKERS: "6"' <<<"${out}" || return 1
  [[ "$(grep -c '^  replicas: ' <<<"${out}")" == "$("${helm}" template moe "${chart}" | grep -c '^  replicas: ' | awk '{print $1 - 1}')" ]]
}
expect ok "attention autoscaling renders a KEDA ScaledObject on the cost rule" check_scaledobject
# The ScaledObject's query, evaluated by promtool over deploy/prometheus/rules.yaml: default prices
# (router 2 x 0.1, attention 2 x 2, expert 4 x 2 $/h) and 5 requests/s at 0.002 $ per request pay
# for (3600 x 5 x 0.002 - 8.2) / 2 = 13.9 attention workers.
check_scaling_query() {  # check_scaling_query WANT TEMPLATE helm-args...: the query of TEMPLATE evaluates to WANT
  local want="$1" template="$2" query; shift 2
  query="$("${helm}" template moe "${chart}" --namespace ns "$@" --show-only "templates/${template}" |
    awk '/query: >-/ {on = 1; next} /threshold:/ {on = 0} on {sub(/^ +/, ""); printf "%s ", $0}')" || return 1
  [[ -n "${query}" ]] || return 1
  cat >"${tmp}/scaling_test.yaml" <<EOF
rule_files:
  - ${root}/deploy/prometheus/rules.yaml
evaluation_interval: 30s
tests:
  - interval: 30s
    input_series:
      - series: moe_worker_price_per_hour_dollars{namespace="ns", instance="router"}
        values: 0.2x60
      - series: moe_worker_price_per_hour_dollars{namespace="ns", instance="attention"}
        values: 4x60
      - series: moe_worker_price_per_hour_dollars{namespace="ns", instance="expert"}
        values: 8x60
      - series: moe_router_requests_total{namespace="ns", instance="router-0", code="OK"}
        values: 0+150x60
    promql_expr_test:
      - expr: round(${query}, 0.01)
        eval_time: 10m
        exp_samples:
          - labels: '{}'
            value: ${want}
EOF
  promtool test rules "${tmp}/scaling_test.yaml"
}
expect ok "the ScaledObject's query counts the attention workers the traffic pays for" \
  check_scaling_query 13.9 attention-scaledobject.yaml --set attention.autoscaling.enabled=true
expect fail "the query check catches a wrong count" \
  check_scaling_query 13.8 attention-scaledobject.yaml --set attention.autoscaling.enabled=true
for bad in attention.autoscaling.costPerRequestDollars=0 attention.autoscaling.minReplicas=0 \
    attention.autoscaling.prometheusAddress=prometheus:9090 attention.autoscaling.treshold=1 \
    attention.autoscaling.pollingIntervalSeconds=1; do
  expect fail "schema rejects ${bad}" "${helm}" template moe "${chart}" --set attention.autoscaling.enabled=true --set "${bad}"
done
expect fail "autoscaling minReplicas above maxReplicas is refused" "${helm}" template moe "${chart}" \
  --set attention.autoscaling.enabled=true --set attention.autoscaling.minReplicas=9
# The device: MOE_DEVICE per worker (cpu by default, the router has none), refused when misspelt;
# the GPU values put every worker on its GPU (MOE_DEVICE=cuda, one nvidia.com/gpu requested and
# limited) over the NCCL data plane (MOE_TRANSPORT=nccl).
worker_docs() {  # worker_docs DIR helm-args...: one file per rendered worker StatefulSet, DIR/<component>
  local dir="$1"; shift
  mkdir -p "${dir}"
  "${helm}" template moe "${chart}" "$@" --show-only templates/worker-statefulset.yaml >"${dir}/all" || return 1
  awk -v dir="${dir}" '/^---/ { n++ } { print > (dir "/doc" n) }' "${dir}/all"
  local doc component
  for doc in "${dir}"/doc*; do
    for component in attention expert; do
      grep -q "^  name: moe-moe-serving-${component}$" "${doc}" && cp "${doc}" "${dir}/${component}"
    done
  done
  [[ -f "${dir}/attention" && -f "${dir}/expert" ]]
}
check_device() {  # check_device WANT helm-args...
  local want="$1" dir="${tmp}/device-$RANDOM" component; shift
  worker_docs "${dir}" "$@" || return 1
  for component in attention expert; do
    grep -A1 -- '- name: MOE_DEVICE$' "${dir}/${component}" | grep -qx " *value: \"${want}\"" || return 1
  done
  ! "${helm}" template moe "${chart}" "$@" --show-only templates/router-deployment.yaml | grep -q MOE_DEVICE
}
check_gpu_values() {  # check_gpu_values [more helm-args...]
  local dir="${tmp}/gpu-$RANDOM" component
  worker_docs "${dir}" -f "${chart}/values-gpu.yaml" "$@" || return 1
  for component in attention expert; do
    grep -A1 -- '- name: MOE_DEVICE$' "${dir}/${component}" | grep -qx ' *value: "cuda"' || return 1
    grep -A4 '^ *limits:$' "${dir}/${component}" | grep -qx ' *nvidia.com/gpu: 1' || return 1
    grep -A4 '^ *requests:$' "${dir}/${component}" | grep -qx ' *nvidia.com/gpu: 1' || return 1
  done
  "${helm}" template moe "${chart}" -f "${chart}/values-gpu.yaml" "$@" --show-only templates/configmap.yaml \
    | grep -qx '  MOE_TRANSPORT: "nccl"'
}
expect ok "workers get MOE_DEVICE=cpu by default, the router none" check_device cpu
expect ok "expert.device and attention.device reach MOE_DEVICE" check_device cuda:1 \
  --set expert.device=cuda:1 --set attention.device=cuda:1
expect ok "GPU values: every worker on cuda with one nvidia.com/gpu, data plane nccl" check_gpu_values
expect fail "GPU check catches the data plane left on ucx" check_gpu_values --set cluster.transport=ucx
expect ok "schema accepts cluster.transport=nccl" "${helm}" template moe "${chart}" --set cluster.transport=nccl
expect fail "GPU check catches a worker left on the CPU" check_device cuda -f "${chart}/values-gpu.yaml" \
  --set attention.device=cpu
for bad in gpu cuda:x CUDA cuda:01 'cuda 0'; do
  expect fail "schema rejects expert.device=${bad}" "${helm}" template moe "${chart}" --set "expert.device=${bad}"
done
# The live balancer (balancer.enabled, default off; manifests_test.mjs checks what it renders): lint
# with it, and refused with a message when it cannot work.
balancer=(--set balancer.enabled=true --set expert.extraExpertBudgetBytes=1073741824)
expect ok "helm lint --strict with the balancer" "${helm}" lint --strict "${chart}" "${balancer[@]}"
expect ok "the balancer runs moectl cluster rebalance --watch with the values' interval" bash -c \
  "'${helm}' template moe '${chart}' ${balancer[*]} --set balancer.intervalSeconds=15 | grep -q -- '- --interval=15$'"
expect fail "the balancer needs an extra-expert budget" "${helm}" template moe "${chart}" --set balancer.enabled=true
# With attention autoscaling the balancer lists every attention worker there may be (maxReplicas);
# moectl skips those that do not run.
expect ok "helm lint --strict with the balancer and attention autoscaling" "${helm}" lint --strict "${chart}" \
  "${balancer[@]}" --set attention.autoscaling.enabled=true
check_balancer_attention() {
  local args
  args="$("${helm}" template moe "${chart}" --namespace ns "${balancer[@]}" --set attention.autoscaling.enabled=true \
    --set attention.autoscaling.maxReplicas=5 --show-only templates/balancer-deployment.yaml |
    sed -n 's/^ *- --attention-workers=//p')" || return 1
  [[ "${args}" == "$(for i in 0 1 2 3 4; do printf 'moe-moe-serving-attention-%d.moe-moe-serving-attention.ns.svc:50051,' "$i"; done | sed 's/,$//')" ]]
}
expect ok "with attention autoscaling the balancer lists maxReplicas attention workers" check_balancer_attention
for bad in balancer.enable=true balancer.minRatio=0.5 balancer.intervalSeconds=0 tls.secrets.operatorr=x; do
  expect fail "schema rejects ${bad}" "${helm}" template moe "${chart}" "${balancer[@]}" --set "${bad}"
done
# Joinable expert workers scaled on cost (expert.autoscaling, off by default; manifests_test.mjs
# checks the objects): a second expert StatefulSet of --joinable workers whose ordinals (ranks) follow
# the home ones, a KEDA ScaledObject on it, the attention workers and the balancer told all
# maxReplicas of them.
elastic=("${balancer[@]}" --set expert.autoscaling.enabled=true)
expect fail "no joinable expert workers by default" bash -c "'${helm}' template moe '${chart}' ${balancer[*]} | grep -q -e moe-moe-serving-joinable -e JOINABLE -e '--joinable\$'"
expect ok "helm lint --strict with expert autoscaling" "${helm}" lint --strict "${chart}" "${elastic[@]}"
expect ok "helm lint --strict with attention and expert autoscaling" "${helm}" lint --strict "${chart}" "${elastic[@]}" \
  --set attention.autoscaling.enabled=true
check_joinable() {
  local out addrs
  out="$("${helm}" template moe "${chart}" --namespace ns "${elastic[@]}" --set expert.replicas=2 \
    --set expert.autoscaling.maxReplicas=3)" || return 1
  addrs="moe-moe-serving-joinable-2.moe-moe-serving-joinable.ns.svc:50051"
  addrs+=",moe-moe-serving-joinable-3.moe-moe-serving-joinable.ns.svc:50051"
  addrs+=",moe-moe-serving-joinable-4.moe-moe-serving-joinable.ns.svc:50051"
  grep -qx "  MOE_JOINABLE_EXPERT_WORKERS: \"${addrs}\"" <<<"${out}" || return 1
  grep -q -- '- --joinable_expert_workers=\$(MOE_JOINABLE_EXPERT_WORKERS)$' <<<"${out}" || return 1
  grep -q -- "- --expert-workers=moe-moe-serving-expert-0\.[^,]*,moe-moe-serving-expert-1\.[^,]*,${addrs}$" <<<"${out}" || return 1
  grep -A4 'scaleTargetRef:' <<<"${out}" | grep -q 'name: moe-moe-serving-joinable$' || return 1
  grep -q 'maxReplicaCount: 3' <<<"${out}" || return 1
  grep -q 'minReplicaCount: 0' <<<"${out}" || return 1
  grep -A1 '^  ordinals:' <<<"${out}" | grep -qx '    start: 2'
}
expect ok "expert autoscaling: joinable workers from rank expert.replicas, told to the attention workers and the balancer" check_joinable
# Default prices (router 2 x 0.1, attention 2 x 2, expert 4 x 2 $/h), 5 requests/s at 0.002 $: a
# budget of 36 $/h. Attention fixed: (36 - 12.2) / 2 = 11.9 joinable expert workers. Both autoscaled
# with budgetShare 0.2: 0.2 of (36 - 8.2) to the joinable ones, 2.78 of them, the rest to 11.12
# attention workers.
expect ok "the joinable ScaledObject's query counts what the budget leaves beside fixed attention workers" \
  check_scaling_query 11.9 expert-scaledobject.yaml "${elastic[@]}"
expect ok "both autoscaled: the joinable ones get budgetShare of the budget" \
  check_scaling_query 2.78 expert-scaledobject.yaml "${elastic[@]}" --set attention.autoscaling.enabled=true \
  --set-json expert.autoscaling.budgetShare=0.2
expect ok "both autoscaled: the attention workers get the rest" \
  check_scaling_query 11.12 attention-scaledobject.yaml "${elastic[@]}" --set attention.autoscaling.enabled=true \
  --set-json expert.autoscaling.budgetShare=0.2
expect fail "expert autoscaling needs the balancer" "${helm}" template moe "${chart}" --set expert.autoscaling.enabled=true
expect ok "the refusal names balancer.enabled" bash -c \
  "'${helm}' template moe '${chart}' --set expert.autoscaling.enabled=true 2>&1 | grep -q 'expert.autoscaling needs balancer.enabled'"
expect fail "expert autoscaling needs the ucx data plane" "${helm}" template moe "${chart}" "${elastic[@]}" \
  --set cluster.transport=nccl
expect fail "expert autoscaling minReplicas above maxReplicas is refused" "${helm}" template moe "${chart}" \
  "${elastic[@]}" --set expert.autoscaling.minReplicas=5
expect fail "two cost thresholds for one budget are refused" "${helm}" template moe "${chart}" "${elastic[@]}" \
  --set attention.autoscaling.enabled=true --set-json expert.autoscaling.costPerRequestDollars=0.003
expect fail "more expert ranks than there are are refused" "${helm}" template moe "${chart}" "${elastic[@]}" \
  --set expert.replicas=4 --set expert.autoscaling.maxReplicas=999
for bad in expert.autoscaling.budgetShare=1 expert.autoscaling.budgetShare=0 expert.autoscaling.minReplicas=-1 \
    expert.autoscaling.maxReplicas=0 expert.autoscaling.costPerRequestDollars=0 expert.autoscaling.enable=true \
    expert.autoscaling.prometheusAddress=prometheus:9090; do
  expect fail "schema rejects ${bad}" "${helm}" template moe "${chart}" "${elastic[@]}" --set "${bad}"
done
expect ok "plain manifests are up to date (deploy/k8s/render.sh)" env HELM="${helm}" "${root}/deploy/k8s/render.sh" --check

echo "deploy_helm: ${passed} passed, ${failed} failed"
[[ ${failed} -eq 0 ]]
