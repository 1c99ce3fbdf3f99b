## VIASH START
par <- list(
  input_solution = "resources_test/simulated_grn/unseen_perturbation/solution.h5ad",
  input_prediction = "resources_test/simulated_grn/unseen_perturbation/prediction.h5ad",
  output = "score.h5ad",
  fdr = 0.05
)
meta <- list(name = "limma_de", resources_dir = "src/utils")
## VIASH END

source(file.path(meta$resources_dir, "anndata_h5.R"))
suppressPackageStartupMessages(library(limma))

fail <- function(message) {
  cat(sprintf("[error] %s\n", message), file = stderr())
  quit(save = "no", status = 1)
}
not_applicable <- function(reason) {
  cat(sprintf("[not applicable] %s\n", reason), file = stderr())
  quit(save = "no", status = 99)
}
read_input <- function(name, ...) {
  tryCatch(read_h5ad(par[[name]], ...), error = function(e) fail(sprintf("--%s %s", name, conditionMessage(e))))
}

# ---------------------------------------------------------------------------------- inputs, checked

# Every matrix is read as stored, genes x rows (one condition per contiguous column), and only the layers
# the metric uses: transposing and row-wise access of 2,000 x 8,000 matrices cost more than the statistics.
fdr <- if (is.null(par$fdr)) 0.05 else par$fdr
if (!is.finite(fdr) || fdr <= 0 || fdr >= 1) fail(sprintf("--fdr is %s; expected a number in (0, 1)", fdr))
solution <- read_input("input_solution", layers = c("replicate_1", "replicate_2", "control",
                                                    "control_replicate_1", "control_replicate_2"),
                       X = FALSE, transposed = TRUE)
prediction <- read_input("input_prediction", layers = character(0), transposed = TRUE)
where <- sprintf("--input_solution file '%s'", par$input_solution)
for (layer in c("replicate_1", "replicate_2", "control")) {
  if (is.null(solution$layers[[layer]])) fail(sprintf("%s: layers['%s'] is missing", where, layer))
}
for (column in c("perturbation", "cell_type", "condition", "stratum")) {
  if (is.null(solution$obs[[column]])) fail(sprintf("%s: obs['%s'] is missing", where, column))
}
if (is.null(prediction$X)) fail(sprintf("--input_prediction file '%s': X is missing", par$input_prediction))
if (!identical(prediction$obs_names, solution$obs_names)) {
  fail(sprintf("--input_prediction file '%s': rows (obs_names) differ from the solution's or are in another order",
               par$input_prediction))
}
if (!identical(prediction$var_names, solution$var_names)) {
  fail(sprintf("--input_prediction file '%s': genes (var_names) differ from the solution's or are in another order",
               par$input_prediction))
}
for (key in c("dataset_id", "task_id", "method_id")) {
  if (is.null(prediction$uns[[key]])) fail(sprintf("--input_prediction file '%s': uns['%s'] is missing", par$input_prediction, key))
}
for (key in c("dataset_id", "task_id")) {
  if (!identical(as.character(prediction$uns[[key]]), as.character(solution$uns[[key]]))) {
    fail(sprintf("--input_prediction file '%s': uns['%s'] is '%s' but the solution's is '%s'; expected a prediction for the same split",
                 par$input_prediction, key, prediction$uns[[key]], solution$uns[[key]]))
  }
}
# the minimum and maximum are NA or infinite exactly when some value is: two passes, no copy of the matrix
all_finite <- function(values) length(values) == 0 || (is.finite(min(values)) && is.finite(max(values)))
if (!all_finite(prediction$X)) fail(sprintf("--input_prediction file '%s': X has NaN or infinite values", par$input_prediction))
for (layer in names(solution$layers)) {
  if (!all_finite(solution$layers[[layer]])) fail(sprintf("%s: layers['%s'] has NaN or infinite values", where, layer))
}

genes <- solution$var_names
n_genes <- length(genes)
n_rows <- length(solution$obs_names)
# a row's target genes (perturbation split on `+`) are never scored: their measured level reflects the
# CRISPR/ORF technology, not the response. keep: genes x rows.
# (match() finds a gene's only position: read_h5ad refuses duplicated gene names, as data.frame row names.)
targets <- lapply(strsplit(as.character(solution$obs$perturbation), "+", fixed = TRUE), trimws)
keep <- matrix(TRUE, n_genes, n_rows)
position <- match(unlist(targets), genes)
owner <- rep(seq_len(n_rows), lengths(targets))
keep[cbind(position, owner)[!is.na(position), , drop = FALSE]] <- FALSE
replicate_1 <- solution$layers$replicate_1
replicate_2 <- solution$layers$replicate_2
control <- solution$layers$control
predicted <- prediction$X - control
prediction$X <- NULL

# control samples: the control replicate halves when the solution has them and they differ, else the
# control profile as one sample
has_control_halves <- all(c("control_replicate_1", "control_replicate_2") %in% names(solution$layers))
control_halves_differ <- if (has_control_halves) {
  colSums(solution$layers$control_replicate_1 != solution$layers$control_replicate_2) > 0
} else {
  rep(FALSE, n_rows)
}
control_samples <- function(row) {  # genes x samples
  if (control_halves_differ[row]) {
    return(cbind(solution$layers$control_replicate_1[, row], solution$layers$control_replicate_2[, row]))
  }
  matrix(control[, row], ncol = 1)
}
# a condition whose two halves are identical is one sample (a single replicate)
two_halves <- colSums(replicate_1 != replicate_2) > 0

# ------------------------------------------------------------ limma: DE genes of every held-out condition

# Rows are fitted together when they share a context (cell_type x condition) and the same control
# samples, so the residual variance is estimated from every condition of the context. Rows are bucketed
# by context and a fingerprint of their control samples, and a row joins a group of its bucket only when
# its control samples are identical to the group's (the fingerprint is a shortcut, never the test): linear
# in the number of rows, not quadratic. The fingerprint is an element-wise product summed per column
# (colSums, not a BLAS product whose kernels may round two equal columns differently), so equal control
# samples always share a bucket.
context <- paste(solution$obs$cell_type, solution$obs$condition, sep = "\x1f")
weights <- sin(seq_along(genes))  # any fixed, non-degenerate weights
fingerprint <- colSums(control * weights)
if (any(control_halves_differ)) {
  halves <- which(control_halves_differ)
  fingerprint[halves] <- colSums(solution$layers$control_replicate_1[, halves, drop = FALSE] * weights) +
    pi * colSums(solution$layers$control_replicate_2[, halves, drop = FALSE] * weights)
}
bucket <- paste(context, control_halves_differ, sprintf("%.17g", fingerprint), sep = "\x1f")
groups <- list()
for (members in split(seq_len(n_rows), factor(bucket, levels = unique(bucket)))) {
  firsts <- integer(0)  # the bucket's groups, by index into `groups`
  samples <- list()  # and their control samples
  for (row in members) {
    own <- control_samples(row)
    g <- Position(function(other) identical(other, own), samples)
    if (is.na(g)) {
      groups[[length(groups) + 1]] <- row
      firsts <- c(firsts, length(groups))
      samples[[length(samples) + 1]] <- own
    } else {
      groups[[firsts[g]]] <- c(groups[[firsts[g]]], row)
    }
  }
}
groups <- groups[order(vapply(groups, `[`, 1L, 1L))]  # in the order of their first row, as before

# One fit per group: the design is one-way (a control level and one level per condition, treatment
# contrasts), so limma's least-squares fit (lmFit) has a closed form, computed here gene-wise instead of
# through the QR decomposition of a samples x (conditions + 1) design (minutes at 2,000 conditions):
# coefficient of condition j = mean of its samples - mean of the control samples; its unscaled standard
# deviation sqrt(1/n_j + 1/n_control); residual variance = within-level sum of squares / (samples - levels);
# Amean = the mean over all samples. The moderated t and its p-value are then limma's own eBayes steps
# (squeezeVar with the Amean trend, t = coefficient / stdev.unscaled / sqrt(s2.post), df.total capped at
# the pooled df): the same numbers as eBayes(lmFit(...), trend = TRUE) to rounding (tests/test_limma_de.py
# compares the two), without the log-odds and F statistics this metric does not use. Every element is
# computed by the same floating-point operations, in the same order, as the row-wise version before it
# (sums over conditions by rowSums, which accumulates in the same order and precision as colSums).
#
# Benjamini-Hochberg without a p-value for every gene: gene g (p-value rank k among the n scored genes)
# is called when n / j * p_(j) < fdr for some j >= k, i.e. when p_g <= p_(kmax), kmax the last rank
# where n / k * p_(k) < fdr. A gene with p > fdr is never called and never sets kmax (n / k >= 1); a gene
# with p < fdr / n is always called (n / k * p < fdr / k) and, for every gene with a larger p-value, only
# counts as one rank. So pt() runs only between the two |t| cut-offs, with a 0.1% margin on each (far
# beyond pt's rounding), and the BH comparisons are those of p.adjust(p, "BH") < fdr on the same numbers.
cutoff <- function(p_value, df, margin) {  # |t| with two-sided p-value p_value, moved by `margin`; checked
  cut <- qt(p_value / 2, df, lower.tail = FALSE) * margin
  side <- 2 * pt(-cut, df)
  ok <- is.finite(cut) & if (margin < 1) side > p_value * (1 + 1e-9) else side < p_value * (1 - 1e-9)
  ifelse(ok, cut, if (margin < 1) 0 else Inf)  # no shortcut where the check fails: every p-value computed
}
fit_group <- function(rows, reference) {  # the genes x rows indices of the DE genes of `rows`, and their signs
  n_control <- ncol(reference)
  n_samples <- ifelse(two_halves[rows], 2, 1)
  df_residual <- n_control + sum(n_samples) - (length(rows) + 1)
  if (df_residual < 1) return(NULL)  # no residual degree of freedom: nothing can be tested
  whole <- length(rows) == n_rows  # every row: the layers themselves, not a copy
  first <- if (whole) replicate_1 else replicate_1[, rows, drop = FALSE]
  second <- if (whole) replicate_2 else replicate_2[, rows, drop = FALSE]
  # genes constant over every sample of the group cannot be DE and carry no variance information (the
  # second and control comparisons only when the first leaves a gene constant)
  anchor <- reference[, 1]
  variable <- rowSums(first != anchor) > 0
  if (!all(variable)) variable <- variable | rowSums(second != anchor) > 0 | rowSums(reference != anchor) > 0
  if (sum(variable) < 2) return(NULL)
  genes_used <- which(variable)
  if (!all(variable)) {
    first <- first[variable, , drop = FALSE]
    second <- second[variable, , drop = FALSE]
  }
  reference <- reference[variable, , drop = FALSE]
  scored <- if (whole && all(variable)) keep else keep[variable, rows, drop = FALSE]
  two <- n_samples == 2
  all_two <- all(two)
  # first + second for a condition with two samples, first alone for a single replicate
  summed <- first
  if (all_two) summed <- first + second else summed[, two] <- first[, two, drop = FALSE] + second[, two, drop = FALSE]
  residual_ss <- rowSums((if (all_two) first - second else first[, two, drop = FALSE] - second[, two, drop = FALSE])^2 / 2)
  rm(first, second)
  if (n_control == 2) residual_ss <- residual_ss + (reference[, 1] - reference[, 2])^2 / 2
  amean <- (rowSums(summed) + rowSums(reference)) / (n_control + sum(n_samples))
  if (all_two) summed <- summed / 2 else summed[, two] <- summed[, two, drop = FALSE] / 2  # the condition means
  coefficients <- summed - rowMeans(reference)
  rm(summed)
  sigma <- sqrt(residual_ss / df_residual)
  squeezed <- squeezeVar(sigma^2, rep(df_residual, length(sigma)), covariate = amean)
  df_total <- pmin(df_residual + squeezed$df.prior, df_residual * length(sigma))  # one, or one per gene
  # |t|: coefficient / stdev_unscaled / sqrt(s2.post), per level of stdev_unscaled (a condition's, by its
  # number of samples), so that no per-element copy of it is made
  stdev_unscaled <- sqrt(1 / n_samples + 1 / n_control)
  size <- coefficients
  for (level in unique(stdev_unscaled)) {
    at <- stdev_unscaled == level
    if (all(at)) size <- abs(coefficients / level / sqrt(squeezed$var.post))
    else size[, at] <- abs(coefficients[, at, drop = FALSE] / level / sqrt(squeezed$var.post))
  }
  n_scored <- colSums(keep)[rows]  # every scored gene, constant ones included (their p-value is 1)
  low <- cutoff(fdr, df_total, 1 - 1e-3)  # below: p > fdr
  high <- cutoff(fdr / max(n_scored), df_total, 1 + 1e-3)  # above: p < fdr / n
  n_used <- length(genes_used)
  gene_of <- function(index) (index - 1L) %% n_used + 1L  # of an index into the genes_used x rows matrices
  candidates <- which(size >= low & scored)
  rm(scored)
  is_sure <- size[candidates] > (if (length(high) == 1) high else high[gene_of(candidates)])
  sure <- candidates[is_sure]
  computed <- candidates[!is_sure]
  rm(candidates, is_sure)
  p_values <- 2 * pt(-size[computed], df = if (length(df_total) == 1) df_total else df_total[gene_of(computed)])
  n_sure <- tabulate((sure - 1L) %/% n_used + 1L, nbins = length(rows))
  n_computed <- tabulate((computed - 1L) %/% n_used + 1L, nbins = length(rows))
  ends <- cumsum(n_computed)
  called <- logical(length(computed))
  for (j in which(n_computed > 0)) {
    span <- (ends[j] - n_computed[j] + 1L):ends[j]
    p <- p_values[span]
    sorted <- sort(p, method = "radix")
    below <- which(n_scored[j] / (n_sure[j] + seq_along(sorted)) * sorted < fdr)
    if (length(below)) called[span] <- p <= sorted[below[length(below)]]
  }
  hits <- c(sure, computed[called])
  signs <- sign(coefficients[hits])
  if (whole && n_used == n_genes) return(list(index = hits, sign = signs))  # already indices into de_sign
  list(index = (rows[(hits - 1L) %/% n_used + 1L] - 1) * as.numeric(n_genes) + genes_used[gene_of(hits)], sign = signs)
}
de_sign <- matrix(0, nrow = n_genes, ncol = n_rows)  # genes x rows: +1 / -1 for a DE gene, 0 otherwise
testable <- rep(FALSE, n_rows)
for (rows in groups) {
  called <- fit_group(rows, control_samples(rows[1]))
  if (is.null(called)) next  # no residual degree of freedom, or fewer than two variable genes
  de_sign[called$index] <- called$sign
  testable[rows] <- TRUE
}
if (!any(testable)) {
  not_applicable("no held-out condition has replicate halves to estimate variance from (every fit has 0 residual degrees of freedom)")
}
n_de <- colSums(de_sign != 0)
if (all(n_de == 0)) {
  not_applicable(sprintf("limma calls no differentially expressed gene at FDR %s in any held-out condition", fdr))
}

# ----------------------------------------------------------------------------- scoring the prediction

# One radix order of a row's |delta| serves both scores. AUROC: Mann-Whitney from the DE genes' ranks,
# tied values at their average rank (as rank(ties.method = "average")), summed per run of tied values
# (half-integers times counts: the sum is exact, whatever the order).
auroc <- function(sorted, positive_sorted) {
  n1 <- sum(positive_sorted)
  n0 <- length(positive_sorted) - n1
  if (n1 == 0 || n0 == 0) return(0.5)
  differs <- sorted[-1L] != sorted[-length(sorted)]
  if (all(differs)) {  # no ties: the ranks are the positions
    rank_sum <- sum(as.numeric(which(positive_sorted)))
  } else {
    last <- c(which(differs), length(sorted))  # the end of each run of ties
    first <- c(1L, last[-length(last)] + 1L)
    in_run <- diff(c(0L, cumsum(positive_sorted)[last]))  # DE genes per run
    rank_sum <- sum((first + last) / 2 * in_run)
  }
  (rank_sum - n1 * (n1 + 1) / 2) / (n1 * n0)
}
# Share of the n DE genes that are among the prediction's n largest |delta| with the observed sign; a
# gene tied at the n-th place counts with the probability that a random tie-break selects it.
# (Summed over the right-signed genes only: the other terms are exact zeros.)
signed_recall <- function(size, sorted, direction, observed_sign) {
  n <- sum(observed_sign != 0)
  if (n == 0) return(0)
  threshold <- sorted[length(sorted) - n + 1]  # the n-th largest
  share <- (n - sum(size > threshold)) / sum(size == threshold)
  right <- size[observed_sign != 0 & direction == observed_sign]
  sum((right > threshold) + (right == threshold) * share) / n  # 1 above, the tie share when tied, else 0
}

values_auroc <- numeric(n_rows)
values_recall <- numeric(n_rows)
for (row in seq_len(n_rows)) {  # a row's values are a contiguous column of the genes x rows matrices
  scored <- keep[, row]
  delta <- predicted[scored, row]
  size <- abs(delta)
  observed_sign <- de_sign[scored, row]
  ordered <- order(size, method = "radix")
  sorted <- size[ordered]
  values_auroc[row] <- auroc(sorted, observed_sign[ordered] != 0)
  values_recall[row] <- signed_recall(size, sorted, sign(delta), observed_sign)
}

n_undefined <- sum(n_de == 0 | n_de == colSums(keep))
cat(sprintf(paste0("limma_de: %d conditions x %d genes in %d limma fit(s), FDR %s; DE genes per condition: ",
                   "median %g, range %d-%d; %d condition(s) without DE genes (or with all genes DE) score the ",
                   "chance level (auroc 0.5, recall 0)\n"),
            n_rows, length(genes), length(groups), fdr, median(n_de), min(n_de), max(n_de), n_undefined),
    file = stderr())

obs <- data.frame(stratum = as.character(solution$obs$stratum), limma_de_auroc = values_auroc,
                  limma_de_recall = values_recall, row.names = solution$obs_names)
write_h5ad(par$output, obs = obs, uns = list(
  dataset_id = as.character(prediction$uns$dataset_id),
  task_id = as.character(prediction$uns$task_id),
  method_id = as.character(prediction$uns$method_id),
  metric_ids = I(c("limma_de_auroc", "limma_de_recall")),
  metric_values = I(c(mean(values_auroc), mean(values_recall))),
  n_de_genes = I(as.integer(n_de)),
  n_conditions_without_de = as.integer(n_undefined),
  fdr = fdr
))
