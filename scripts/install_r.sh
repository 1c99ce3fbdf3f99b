#!/usr/bin/env bash
# R for the R components (src/metrics/limma_de and any r_script component a user adds), from Debian's
# packages: r-base-core (Rscript), r-bioc-limma (the DE fits), r-cran-hdf5r (src/utils/anndata_h5.R reads
# and writes h5ad without Python), r-cran-jsonlite is pulled in with them. Idempotent: does nothing when
# Rscript already loads these packages. Needs root (or sudo) for apt-get; without either it says so and
# exits 0, and the R tests then skip with their reason.
set -euo pipefail

PACKAGES=(r-base-core r-bioc-limma r-cran-hdf5r)
check='for (p in c("limma", "hdf5r")) suppressPackageStartupMessages(library(p, character.only = TRUE))'

if command -v Rscript >/dev/null 2>&1 && Rscript -e "$check" >/dev/null 2>&1; then
  echo "R: already installed ($(Rscript --version 2>&1 | head -n 1))"
  exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
  SUDO=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  SUDO="sudo -n"
else
  echo "R: not installed and no root/sudo to install it; the R component tests will be skipped" >&2
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "R: no apt-get on this machine; install ${PACKAGES[*]} by hand for the R components" >&2
  exit 0
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# --no-install-recommends: the recommends (r-recommended, compilers, docs) add minutes and nothing the
# components use.
$SUDO apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null
Rscript -e "$check"
echo "R: installed ($(Rscript --version 2>&1 | head -n 1))"
