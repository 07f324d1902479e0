#!/usr/bin/env bash
# Makes a cluster CA and one mTLS certificate per role with OpenSSL, as docs/operations.md#security
# describes, and the chart's three Secrets (cert-manager's layout: ca.crt, tls.crt, tls.key) as a
# manifest, for clusters without cert-manager:
#   deploy/k8s/make_tls_secrets.sh OUT_DIR [--fullname NAME] [--days N]
#   kubectl -n moe-serving apply -f OUT_DIR/secrets.yaml
# OUT_DIR gets ca.crt and ca.key (keep ca.key out of the cluster), <role>.crt/.key for router,
# attention-worker, expert-worker and operator (CN moe-operator: for people and tools, e.g. Drain;
# not put in a Secret), and secrets.yaml. NAME is the release's full name (default moe-moe-serving,
# release "moe"): the Secrets are NAME-router-tls, NAME-attention-tls and NAME-expert-tls, the
# chart's default tls.secrets. An existing ca.crt/ca.key in OUT_DIR is reused, so certificates can
# be renewed under the same CA.
set -euo pipefail

usage() { echo "usage: $0 OUT_DIR [--fullname NAME] [--days N]" >&2; exit 2; }
[[ $# -ge 1 && "$1" != -* ]] || usage
out="$1"; shift
fullname=moe-moe-serving
days=365
while [[ $# -gt 0 ]]; do
  case "$1" in
    --fullname) [[ $# -ge 2 ]] || usage; fullname="$2"; shift 2 ;;
    --days) [[ $# -ge 2 && "$2" =~ ^[1-9][0-9]*$ ]] || usage; days="$2"; shift 2 ;;
    *) usage ;;
  esac
done
[[ "${fullname}" =~ ^[a-z0-9]([-a-z0-9]*[a-z0-9])?$ ]] || { echo "$0: --fullname must be a DNS label, not '${fullname}'" >&2; exit 2; }
command -v openssl >/dev/null || { echo "$0: openssl is not installed" >&2; exit 1; }

mkdir -p "${out}"
out="$(cd "${out}" && pwd)"
cd "${out}"
umask 077
ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
if [[ ! -f ca.crt || ! -f ca.key ]]; then
  openssl req -x509 "${ec[@]}" -days "$((days * 2))" -keyout ca.key -out ca.crt -subj /CN=moe-cluster-ca 2>/dev/null
fi
printf 'subjectAltName=DNS:moe-cluster.internal\nextendedKeyUsage=serverAuth,clientAuth\nkeyUsage=critical,digitalSignature\n' > ext.cnf
for role in router attention-worker expert-worker operator; do
  openssl req "${ec[@]}" -keyout "${role}.key" -out "${role}.csr" -subj "/CN=moe-${role}" 2>/dev/null
  openssl x509 -req -in "${role}.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days "${days}" \
    -extfile ext.cnf -out "${role}.crt" 2>/dev/null
  rm -f "${role}.csr"
done
rm -f ext.cnf

b64() { base64 -w0 "$1"; }
{
  echo "# mTLS Secrets of the moe-serving chart (release full name ${fullname}), made by make_tls_secrets.sh."
  for pair in router:router attention:attention-worker expert:expert-worker; do
    component="${pair%%:*}" role="${pair#*:}"
    cat <<EOF
---
apiVersion: v1
kind: Secret
type: kubernetes.io/tls
metadata:
  name: ${fullname}-${component}-tls
  labels:
    app.kubernetes.io/part-of: moe-serving
    app.kubernetes.io/component: ${component}
data:
  ca.crt: $(b64 ca.crt)
  tls.crt: $(b64 "${role}.crt")
  tls.key: $(b64 "${role}.key")
EOF
  done
} > secrets.yaml
echo "wrote ${out}/secrets.yaml (${fullname}-{router,attention,expert}-tls); keep ${out}/ca.key safe" >&2
