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
control_samples <- function(row) {
  if (has_control_halves) {
    halves <- rbind(solution$layers$control_replicate_1[row, ], solution$layers$control_replicate_2[row, ])
    if (!identical(halves[1, ], halves[2, ])) return(halves)
  }
  matrix(control[row, ], nrow = 1)
}
condition_samples <- function(row) {
  halves <- rbind(solution$layers$replicate_1[row, ], solution$layers$replicate_2[row, ])
  if (identical(halves[1, ], halves[2, ])) halves[1, , drop = FALSE] else halves  # a single replicate
}

# ------------------------------------------------------------ limma: DE genes of every held-out condition

# Rows are fitted together when they share a context (cell_type x condition) and the same control
# samples, so the residual variance is estimated from every condition of the context.
context <- paste(solution$obs$cell_type, solution$obs$condition, sep = "\x1f")
groups <- list()
for (row in seq_len(n_rows)) {
  placed <- FALSE
  for (g in seq_along(groups)) {
    first <- groups[[g]][1]
    if (context[first] == context[row] && identical(control_samples(first), control_samples(row))) {
      groups[[g]] <- c(groups[[g]], row)
      placed <- TRUE
      break
    }
  }
  if (!placed) groups[[length(groups) + 1]] <- row
}

de_sign <- matrix(0, nrow = n_rows, ncol = length(genes))  # +1 / -1 for a DE gene, 0 otherwise
testable <- rep(FALSE, n_rows)
for (rows in groups) {
  blocks <- c(list(control_samples(rows[1])), lapply(rows, condition_samples))
  expression <- t(do.call(rbind, blocks))  # genes x samples
  level <- factor(rep(c("control", paste0("c", seq_along(rows))), vapply(blocks, nrow, 1L)),
                  levels = c("control", paste0("c", seq_along(rows))))
  design <- model.matrix(~ level)
  if (ncol(expression) - ncol(design) < 1) next  # no residual degree of freedom: nothing can be tested
  # genes constant over every sample of the group cannot be DE and carry no variance information
  variable <- apply(expression, 1, function(v) max(v) - min(v) > 0)
  if (sum(variable) < 2) next
  fit <- eBayes(lmFit(expression[variable, , drop = FALSE], design), trend = TRUE)
  for (j in seq_along(rows)) {
    row <- rows[j]
    p <- rep(1, length(genes))
    p[variable] <- fit$p.value[, j + 1]
    effect <- rep(0, length(genes))
    effect[variable] <- fit$coefficients[, j + 1]
    scored <- keep[row, ]
    adjusted <- rep(1, length(genes))
    adjusted[scored] <- p.adjust(p[scored], method = "BH")
    de_sign[row, ] <- ifelse(scored & adjusted < fdr, sign(effect), 0)
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

auroc <- function(score, positive) {
  n1 <- sum(positive)
  n0 <- length(positive) - n1
  if (n1 == 0 || n0 == 0) return(0.5)
  ranks <- rank(score, ties.method = "average")
  (sum(ranks[positive]) - n1 * (n1 + 1) / 2) / (n1 * n0)
}
# Share of the n DE genes that are among the prediction's n largest |delta| with the observed sign; a
# gene tied at the n-th place counts with the probability that a random tie-break selects it.
signed_recall <- function(size, direction, observed_sign) {
  n <- sum(observed_sign != 0)
  if (n == 0) return(0)
  threshold <- sort(size, decreasing = TRUE)[n]
  above <- size > threshold
  tied <- size == threshold
  chance <- ifelse(above, 1, ifelse(tied, (n - sum(above)) / sum(tied), 0))
  sum(chance * (observed_sign != 0 & direction == observed_sign)) / n
}

values_auroc <- numeric(n_rows)
values_recall <- numeric(n_rows)
for (row in seq_len(n_rows)) {
  scored <- keep[row, ]
  size <- abs(predicted[row, scored])
  observed_sign <- de_sign[row, scored]
  values_auroc[row] <- auroc(size, observed_sign != 0)
  values_recall[row] <- signed_recall(size, sign(predicted[row, scored]), observed_sign)
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
