#!/usr/bin/env bash
# Build the image of every component and the tooling image for one tag, named as main.nf expects them:
#   <registry>/<organization>/<package>/<namespace>/<name>:<tag>   (viash's naming, from _viash.yaml)
#   <registry>/<organization>/<package>/perturbcast:<tag>          (plan, leakage checks, aggregation)
#
#   scripts/build_images.sh                      # :dev, local images (what `nextflow run . -profile test,docker` uses)
#   scripts/build_images.sh 1.2.0 --push         # a release: build and push
#   scripts/build_images.sh dev --only tooling   # only the tooling image ("--only src/methods/x" for one component)
#
# With viash on the PATH the components are built by `viash ns build --setup cachedbuild` (the configs' docker
# engines, exactly as viash builds them); without it, each config's docker engine (image + setup: apt, python,
# r, docker run/env) is rendered to a Dockerfile and built with `docker build`. Needs docker (or DOCKER=podman).
# Environment: REGISTRY (default: _viash.yaml links.docker_registry), ORGANIZATION, PACKAGE (default: _viash.yaml
# organization and name), PYTHON (to render the Dockerfiles; default: python3 with PyYAML).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
TAG="dev"
PUSH=0
ONLY=""
while [ "$#" -gt 0 ]; do
  case "$1" in
    --push) PUSH=1 ;;
    --only) ONLY="$2"; shift ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    -*) echo "[error] unknown option $1" >&2; exit 2 ;;
    *) TAG="$1" ;;
  esac
  shift
done
DOCKER="${DOCKER:-docker}"
PYTHON="${PYTHON:-python3}"
command -v "$DOCKER" >/dev/null || { echo "[error] $DOCKER not found: building images needs docker (or DOCKER=podman)" >&2; exit 1; }

field() {  # a top-level field of _viash.yaml (links.docker_registry for `registry`)
  "$PYTHON" - "$1" <<'PY'
import sys, yaml
config = yaml.safe_load(open("_viash.yaml"))
key = sys.argv[1]
print((config.get("links") or {}).get("docker_registry", "") if key == "registry" else config.get(key, ""))
PY
}
REGISTRY="${REGISTRY:-$(field registry)}"
ORGANIZATION="${ORGANIZATION:-$(field organization)}"
PACKAGE="${PACKAGE:-$(field name)}"
PREFIX="${REGISTRY:+$REGISTRY/}${ORGANIZATION:+$ORGANIZATION/}$PACKAGE"
built=()

push() {
  built+=("$1")
  if [ "$PUSH" = 1 ]; then "$DOCKER" push "$1"; fi
}

# ---- the tooling image: perturbcast and its dependencies (main.nf's PLAN, CHECK and AGGREGATE)
if [ -z "$ONLY" ] || [ "$ONLY" = tooling ]; then
  image="$PREFIX/perturbcast:$TAG"
  echo "+ $image"
  "$DOCKER" build --tag "$image" --file - . <<'DOCKERFILE'
FROM python:3.11-slim
# procps: `ps`, which Nextflow's task wrapper uses to measure a task's cpu and memory
RUN apt-get update && apt-get install -y --no-install-recommends procps && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml README.md /opt/perturbcast/
COPY perturbcast /opt/perturbcast/perturbcast
RUN pip install --no-cache-dir /opt/perturbcast
DOCKERFILE
  push "$image"
  [ "$ONLY" = tooling ] && { printf 'built %s\n' "${built[@]}"; exit 0; }
fi

# ---- the components
# src/workflows/ holds viash workflows (no image of their own; viash ns build builds them too)
mapfile -t configs < <(ls src/*/*/config.vsh.yaml | grep -v '^src/workflows/')
if [ -n "$ONLY" ]; then configs=("${ONLY%/}/config.vsh.yaml"); fi
if command -v viash >/dev/null && [ -z "$ONLY" ]; then
  echo "+ viash ns build (tag $TAG)"
  viash ns build --config_mod ".version := '$TAG'" \
    --config_mod ".engines[.type == \"docker\"].target_registry := '$REGISTRY'" \
    --setup cachedbuild $([ "$PUSH" = 1 ] && echo --push) --parallel
  for config in "${configs[@]}"; do
    dir="$(dirname "$config")"; built+=("$PREFIX/$(basename "$(dirname "$dir")")/$(basename "$dir"):$TAG")
  done
else
  for config in "${configs[@]}"; do
    dir="$(dirname "$config")"
    image="$PREFIX/$(basename "$(dirname "$dir")")/$(basename "$dir"):$TAG"
    echo "+ $image"
    PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" - "$config" > "$dir/.Dockerfile.build" <<'PY'
"""A Dockerfile from a viash config's docker engine: image, then its setup (apt, python, r, docker)."""
import shlex, sys
from perturbcast.config import load_config

config = load_config(sys.argv[1])
engine = next(e for e in config.raw.get("engines") or [] if e.get("type") == "docker")
lines = [f"FROM {engine['image']}"]
for step in engine.get("setup") or []:
    kind = step.get("type")
    if kind == "apt":
        packages = " ".join(step.get("packages") or [])
        lines.append(f"RUN apt-get update && apt-get install -y --no-install-recommends {packages} && rm -rf /var/lib/apt/lists/*")
    elif kind == "python":
        packages = " ".join(shlex.quote(p) for p in (step.get("packages") or []) + (step.get("pypi") or []))
        if packages:
            lines.append(f"RUN pip install --no-cache-dir {packages}")
    elif kind == "r":
        cran = ", ".join(f'"{p}"' for p in (step.get("packages") or []) + (step.get("cran") or []))
        bioc = ", ".join(f'"{p}"' for p in step.get("bioc") or [])
        if cran:
            lines.append(f"RUN Rscript -e 'install.packages(c({cran}), repos = \"https://cloud.r-project.org\")'")
        if bioc:
            lines.append(f"RUN Rscript -e 'if (!requireNamespace(\"BiocManager\", quietly = TRUE)) install.packages(\"BiocManager\", "
                         f"repos = \"https://cloud.r-project.org\"); BiocManager::install(c({bioc}))'")
    elif kind == "docker":
        for key, value in (step.get("env") or {}).items() if isinstance(step.get("env"), dict) else []:
            lines.append(f"ENV {key}={value}")
        for command in step.get("run") or []:
            lines.append(f"RUN {command}")
    else:
        raise SystemExit(f"[error] {sys.argv[1]}: setup type '{kind}' is not rendered; build with viash")
print("\n".join(lines))
PY
    "$DOCKER" build --tag "$image" --file "$dir/.Dockerfile.build" "$dir"
    rm -f "$dir/.Dockerfile.build"
    push "$image"
  done
fi
printf 'built %s\n' "${built[@]}"
