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
read_input <- function(name) {
  tryCatch(read_h5ad(par[[name]]), error = function(e) fail(sprintf("--%s %s", name, conditionMessage(e))))
}

# ---------------------------------------------------------------------------------- inputs, checked

fdr <- if (is.null(par$fdr)) 0.05 else par$fdr
if (!is.finite(fdr) || fdr <= 0 || fdr >= 1) fail(sprintf("--fdr is %s; expected a number in (0, 1)", fdr))
solution <- read_input("input_solution")
prediction <- read_input("input_prediction")
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
if (!all(is.finite(prediction$X))) fail(sprintf("--input_prediction file '%s': X has NaN or infinite values", par$input_prediction))
for (layer in names(solution$layers)) {
  if (!all(is.finite(solution$layers[[layer]]))) fail(sprintf("%s: layers['%s'] has NaN or infinite values", where, layer))
}

genes <- solution$var_names
n_rows <- length(solution$obs_names)
# a row's target genes (perturbation split on `+`) are never scored: their measured level reflects the
# CRISPR/ORF technology, not the response
targets <- lapply(strsplit(as.character(solution$obs$perturbation), "+", fixed = TRUE), trimws)
keep <- t(vapply(targets, function(t) !(genes %in% t), logical(length(genes))))
if (length(genes) == 1) keep <- matrix(keep, ncol = 1)
control <- solution$layers$control
predicted <- prediction$X - control

# control samples: the control replicate halves when the solution has them and they differ, else the
# control profile as one sample
has_control_halves <- all(c("control_replicate_1", "control_replicate_2") %in% names(solution$layers))
control_halves_differ <- if (has_control_halves) {
  rowSums(solution$layers$control_replicate_1 != solution$layers$control_replicate_2) > 0
} else {
  rep(FALSE, n_rows)
}
control_samples <- function(row) {
  if (control_halves_differ[row]) {
    return(rbind(solution$layers$control_replicate_1[row, ], solution$layers$control_replicate_2[row, ]))
  }
  matrix(control[row, ], nrow = 1)
}
# a condition whose two halves are identical is one sample (a single replicate)
two_halves <- rowSums(solution$layers$replicate_1 != solution$layers$replicate_2) > 0

# ------------------------------------------------------------ limma: DE genes of every held-out condition

# Rows are fitted together when they share a context (cell_type x condition) and the same control
# samples, so the residual variance is estimated from every condition of the context. Rows are bucketed
# by context and a fingerprint of their control samples (one matrix product), and a row joins a group of
# its bucket only when its control samples are identical to the group's (the fingerprint is a shortcut,
# never the test): linear in the number of rows, not quadratic.
context <- paste(solution$obs$cell_type, solution$obs$condition, sep = "\x1f")
weights <- sin(seq_along(genes))  # any fixed, non-degenerate weights
fingerprint <- as.vector(control %*% weights)
if (has_control_halves) {
  fingerprint <- ifelse(control_halves_differ,
                        as.vector(solution$layers$control_replicate_1 %*% weights) +
                          pi * as.vector(solution$layers$control_replicate_2 %*% weights),
                        fingerprint)
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
# contrasts), so limma's least-squares fit (lmFit) has a closed form, computed here column-wise instead of
# through the QR decomposition of a samples x (conditions + 1) design (minutes at 2,000 conditions):
# coefficient of condition j = mean of its samples - mean of the control samples; its unscaled standard
# deviation sqrt(1/n_j + 1/n_control); residual variance = within-level sum of squares / (samples - levels);
# Amean = the mean over all samples. The moderated t and its p-value are then limma's own eBayes steps
# (squeezeVar with the Amean trend, t = coefficient / stdev.unscaled / sqrt(s2.post), df.total capped at
# the pooled df): the same numbers as eBayes(lmFit(...), trend = TRUE) to rounding (tests/test_limma_de.py
# compares the two), without the log-odds and F statistics this metric does not use.
# p.adjust(p, "BH") without its second sort and argument handling (2,000 calls): the same numbers, since
# tied p-values get the same adjusted value whatever their order
benjamini_hochberg <- function(p) {
  n <- length(p)
  if (n == 0) return(numeric(0))
  ordered <- order(p, decreasing = TRUE, method = "radix")
  adjusted <- numeric(n)
  adjusted[ordered] <- pmin(1, cummin(n / (n:1L) * p[ordered]))
  adjusted
}
de_sign <- matrix(0, nrow = n_rows, ncol = length(genes))  # +1 / -1 for a DE gene, 0 otherwise
testable <- rep(FALSE, n_rows)
for (rows in groups) {
  reference <- control_samples(rows[1])
  n_control <- nrow(reference)
  n_samples <- ifelse(two_halves[rows], 2, 1)
  df_residual <- n_control + sum(n_samples) - (length(rows) + 1)
  if (df_residual < 1) next  # no residual degree of freedom: nothing can be tested
  first <- solution$layers$replicate_1[rows, , drop = FALSE]
  second <- solution$layers$replicate_2[rows, , drop = FALSE]
  # genes constant over every sample of the group cannot be DE and carry no variance information
  anchor <- reference[1, ]
  variable <- colSums(first != rep(anchor, each = length(rows))) > 0 |
    colSums(second != rep(anchor, each = length(rows))) > 0 | colSums(reference != rep(anchor, each = n_control)) > 0
  if (sum(variable) < 2) next
  first <- first[, variable, drop = FALSE]
  second <- second[, variable, drop = FALSE]
  reference <- reference[, variable, drop = FALSE]
  control_mean <- colMeans(reference)
  # conditions x genes, as the layers are stored (no transposition of the large matrices)
  condition_mean <- (first + second * (n_samples == 2)) / n_samples  # a single replicate counts once
  residual_ss <- colSums(((first - second)^2 / 2) * (n_samples == 2))
  if (n_control == 2) residual_ss <- residual_ss + (reference[1, ] - reference[2, ])^2 / 2
  amean <- (colSums(first + second * (n_samples == 2)) + colSums(reference)) / (n_control + sum(n_samples))
  sigma <- sqrt(residual_ss / df_residual)
  coefficients <- condition_mean - rep(control_mean, each = length(rows))
  stdev_unscaled <- sqrt(1 / n_samples + 1 / n_control)  # recycled down the columns: one per condition
  squeezed <- squeezeVar(sigma^2, rep(df_residual, length(sigma)), covariate = amean)
  t_statistic <- coefficients / stdev_unscaled / rep(sqrt(squeezed$var.post), each = length(rows))
  df_total <- pmin(df_residual + squeezed$df.prior, df_residual * length(sigma))
  p_values <- 2 * pt(-abs(t_statistic), df = rep(df_total, each = length(rows)))
  for (j in seq_along(rows)) {
    row <- rows[j]
    p <- rep(1, length(genes))
    p[variable] <- p_values[j, ]
    effect <- rep(0, length(genes))
    effect[variable] <- coefficients[j, ]
    scored <- keep[row, ]
    adjusted <- rep(1, length(genes))
    adjusted[scored] <- benjamini_hochberg(p[scored])
    called <- scored & adjusted < fdr
    de_sign[row, called] <- sign(effect[called])
    testable[row] <- TRUE
  }
}
if (!any(testable)) {
  not_applicable("no held-out condition has replicate halves to estimate variance from (every fit has 0 residual degrees of freedom)")
}
n_de <- rowSums(de_sign != 0)
if (all(n_de == 0)) {
  not_applicable(sprintf("limma calls no differentially expressed gene at FDR %s in any held-out condition", fdr))
}

# ----------------------------------------------------------------------------- scoring the prediction

# One radix sort of a row's |delta| serves both scores: the ranks (ties at their average rank, as
# rank(ties.method = "average")) and the n-th largest value.
sorted_ranks <- function(size) {
  ordered <- order(size, method = "radix")
  sorted <- size[ordered]
  last <- c(which(sorted[-1L] != sorted[-length(sorted)]), length(sorted))  # the end of each run of ties
  first <- c(1L, last[-length(last)] + 1L)
  ranks <- numeric(length(size))
  ranks[ordered] <- rep((first + last) / 2, last - first + 1L)
  list(sorted = sorted, ranks = ranks)
}
auroc <- function(ranks, positive) {
  n1 <- sum(positive)
  n0 <- length(positive) - n1
  if (n1 == 0 || n0 == 0) return(0.5)
  (sum(ranks[positive]) - n1 * (n1 + 1) / 2) / (n1 * n0)
}
# Share of the n DE genes that are among the prediction's n largest |delta| with the observed sign; a
# gene tied at the n-th place counts with the probability that a random tie-break selects it.
signed_recall <- function(size, sorted, direction, observed_sign) {
  n <- sum(observed_sign != 0)
  if (n == 0) return(0)
  threshold <- sorted[length(sorted) - n + 1]  # the n-th largest
  above <- size > threshold
  tied <- size == threshold
  chance <- above + tied * ((n - sum(above)) / sum(tied))  # 1 above, the tie share when tied, else 0
  sum(chance * (observed_sign != 0 & direction == observed_sign)) / n
}

values_auroc <- numeric(n_rows)
values_recall <- numeric(n_rows)
for (row in seq_len(n_rows)) {
  scored <- keep[row, ]
  size <- abs(predicted[row, scored])
  observed_sign <- de_sign[row, scored]
  order_of_size <- sorted_ranks(size)
  values_auroc[row] <- auroc(order_of_size$ranks, observed_sign != 0)
  values_recall[row] <- signed_recall(size, order_of_size$sorted, sign(predicted[row, scored]), observed_sign)
}

n_undefined <- sum(n_de == 0 | n_de == rowSums(keep))
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
