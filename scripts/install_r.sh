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

source "$(dirname "$0")/apt_install.sh"
# --no-install-recommends: the recommends (r-recommended, compilers, docs) add minutes and nothing the
# components use.
apt_install R "the R component tests will be skipped" --no-install-recommends "${PACKAGES[@]}" || exit 0
Rscript -e "$check"
echo "R: installed ($(Rscript --version 2>&1 | head -n 1))"
