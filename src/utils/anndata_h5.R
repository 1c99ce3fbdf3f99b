# Reading and writing AnnData h5ad files from R with hdf5r only (no Python, no reticulate).
#
# Why not the `anndata` R package: it drives Python's anndata through reticulate, so an R component would
# need a matching Python environment inside R's process; hdf5r reads the on-disk format (anndata's
# encoding-type / encoding-version attributes) directly, works offline from Debian's r-cran-hdf5r, and is
# enough for the slots components use. Included as a viash resource:
#   source(file.path(meta$resources_dir, "anndata_h5.R"))
#
#   adata <- read_h5ad(par$input_solution)   # list(X, layers, obs, var, uns, obs_names, var_names)
#   adata$X                                  # n_obs x n_vars numeric matrix, as in Python
#   read_h5ad(path, layers = c("a", "b"), X = FALSE, transposed = TRUE)
#                                            # only these layers, no X, each n_vars x n_obs without dimnames
#   write_h5ad(par$output, obs = data.frame(...), uns = list(metric_ids = I("m"), ...))
#
# Dense arrays, csr_matrix / csc_matrix (returned dense), dataframes (string-array, numeric and boolean
# arrays, categorical, nullable-integer / nullable-boolean columns) and nested uns dicts are read. Writing
# covers what a score or a small prediction needs: X (dense), obs / var dataframes with character and
# numeric columns, and uns scalars, vectors and nested lists. In uns, a length-1 vector is written as a
# scalar unless wrapped in I() (then it is an array, e.g. `metric_ids = I("my_metric")`).

suppressPackageStartupMessages(library(hdf5r))

h5ad_stop <- function(path, message) {
  stop(sprintf("file '%s': %s", path, message), call. = FALSE)
}

.h5_attr <- function(node, name) {
  if (!(name %in% h5attr_names(node))) return(NULL)
  attribute <- node$attr_open(name)
  on.exit(attribute$close())
  # hdf5r cannot read a zero-length attribute (anndata's empty `column-order`)
  if (attribute$get_space()$get_select_npoints() == 0) return(character(0))
  attribute$read()
}

# hdf5r cannot read a zero-length variable-length string dataset (H5Dvlen_reclaim fails), which anndata
# writes for an empty string list such as a method's uns['fallback_conditions']
.h5_read <- function(node) {
  if (length(node$dims) && prod(node$dims) == 0) {
    return(if (inherits(node$get_type(), "H5T_STRING")) character(0) else numeric(0))
  }
  node$read()
}

.h5_matrix <- function(node, path, where, transposed = FALSE) {
  # hdf5r reverses dimensions: an (n_obs, n_vars) array comes back as n_vars x n_obs, which is what
  # `transposed` asks for (no transposition of a large matrix)
  type <- .h5_attr(node, "encoding-type")
  if (inherits(node, "H5D")) {
    return(if (transposed) node$read() else t(node$read()))
  }
  if (!is.null(type) && type %in% c("csr_matrix", "csc_matrix")) {
    shape <- as.integer(.h5_attr(node, "shape"))
    data <- node[["data"]]$read()
    indices <- as.integer(node[["indices"]]$read())
    indptr <- as.numeric(node[["indptr"]]$read())
    dense <- matrix(0, nrow = shape[1], ncol = shape[2])
    if (length(data)) {
      outer <- rep.int(seq_along(diff(indptr)), diff(indptr))
      positions <- if (type == "csr_matrix") cbind(outer, indices + 1L) else cbind(indices + 1L, outer)
      dense[positions] <- data
    }
    return(if (transposed) t(dense) else dense)
  }
  h5ad_stop(path, sprintf("%s has encoding '%s', expected a dense array or a csr/csc matrix", where, type))
}

.h5_column <- function(node) {
  type <- .h5_attr(node, "encoding-type")
  if (identical(type, "categorical")) {
    categories <- node[["categories"]]$read()
    codes <- node[["codes"]]$read()
    values <- categories[codes + 1L]  # code -1 (missing) gives NA
    return(factor(values, levels = categories))
  }
  if (!is.null(type) && type %in% c("nullable-integer", "nullable-boolean")) {
    values <- node[["values"]]$read()
    values[node[["mask"]]$read()] <- NA
    return(values)
  }
  .h5_read(node)
}

.h5_dataframe <- function(node) {
  index_name <- .h5_attr(node, "_index")
  index <- as.character(node[[index_name]]$read())
  columns <- as.character(.h5_attr(node, "column-order"))
  frame <- data.frame(row.names = seq_along(index))
  for (column in columns) frame[[column]] <- .h5_column(node[[column]])
  rownames(frame) <- index
  frame
}

.h5_uns <- function(node) {
  if (inherits(node, "H5D")) {
    value <- .h5_read(node)
    if (is.array(value) && length(dim(value)) > 1) value <- t(value)
    return(value)
  }
  type <- .h5_attr(node, "encoding-type")
  if (identical(type, "dataframe")) return(.h5_dataframe(node))
  if (!is.null(type) && !(type %in% c("dict"))) return(.h5_column(node))
  out <- list()
  for (key in names(node)) out[[key]] <- .h5_uns(node[[key]])
  out
}

# `layers`: the layers to read (NULL: all; absent ones are skipped); `X = FALSE` skips X. With
# `transposed = TRUE` every matrix is n_vars x n_obs, as stored on disk (a profile is a contiguous column),
# and without dimnames (the names are `obs_names` / `var_names`): what a script that works on a large
# matrix column by column wants, without two copies of each matrix.
read_h5ad <- function(path, layers = NULL, X = TRUE, transposed = FALSE) {
  if (!file.exists(path)) h5ad_stop(path, "file does not exist")
  file <- tryCatch(H5File$new(path, mode = "r"), error = function(e) {
    h5ad_stop(path, sprintf("cannot be read as HDF5 (%s)", conditionMessage(e)))
  })
  on.exit(file$close_all(), add = TRUE)
  obs <- .h5_dataframe(file[["obs"]])
  var <- .h5_dataframe(file[["var"]])
  names_of <- list(rownames(obs), rownames(var))
  read_X <- X
  X <- if (read_X && file$exists("X")) .h5_matrix(file[["X"]], path, "X", transposed) else NULL
  if (!is.null(X) && !transposed) dimnames(X) <- names_of
  layer_list <- list()
  if (file$exists("layers")) {
    wanted <- if (is.null(layers)) names(file[["layers"]]) else layers
    for (layer in wanted) {
      if (!file$exists(file.path("layers", layer))) next
      value <- .h5_matrix(file[["layers"]][[layer]], path, sprintf("layers['%s']", layer), transposed)
      if (!transposed) dimnames(value) <- names_of
      layer_list[[layer]] <- value
    }
  }
  uns <- if (file$exists("uns")) .h5_uns(file[["uns"]]) else list()
  list(X = X, layers = layer_list, obs = obs, var = var, uns = uns,
       obs_names = names_of[[1]], var_names = names_of[[2]])
}

# ------------------------------------------------------------------------------------------- writing

# One variable-length UTF-8 string type, made once and reused: a new hdf5r type object per attribute and
# string array took about a third of writing a score file.
.h5ad_env <- new.env(parent = emptyenv())
.utf8 <- function() {
  type <- .h5ad_env$utf8
  if (is.null(type) || !type$is_valid) {
    type <- H5T_STRING$new(size = Inf)
    type$set_cset("UTF-8")
    .h5ad_env$utf8 <- type
  }
  type
}

.set_attr <- function(node, name, value, array = FALSE) {
  if (is.character(value)) {
    space <- if (array) H5S$new(dims = length(value), maxdims = length(value)) else H5S$new("scalar")
    node$create_attr(name, robj = value, dtype = .utf8(), space = space)
  } else if (is.logical(value)) {
    node$create_attr(name, robj = value, space = H5S$new("scalar"))
  } else {
    node$create_attr(name, robj = value, space = H5S$new(dims = length(value), maxdims = length(value)))
  }
}

.encode <- function(node, type, version) {
  .set_attr(node, "encoding-type", type)
  .set_attr(node, "encoding-version", version)
}

.write_vector <- function(group, name, value, scalar) {
  if (is.factor(value)) value <- as.character(value)
  if (scalar) {
    space <- H5S$new("scalar")
    if (is.character(value)) {
      node <- group$create_dataset(name, robj = value, dtype = .utf8(), space = space, chunk_dims = NULL)
      .encode(node, "string", "0.2.0")
    } else {
      node <- group$create_dataset(name, robj = value, space = space, chunk_dims = NULL)
      .encode(node, "numeric-scalar", "0.2.0")
    }
    return(invisible(node))
  }
  space <- H5S$new(dims = length(value), maxdims = length(value))
  if (is.character(value)) {
    node <- group$create_dataset(name, robj = value, dtype = .utf8(), space = space, chunk_dims = NULL)
    .encode(node, "string-array", "0.2.0")
  } else {
    if (anyNA(value)) stop(sprintf("write_h5ad: '%s' has missing values; write finite numbers", name), call. = FALSE)
    node <- group$create_dataset(name, robj = value, space = space, chunk_dims = NULL)
    .encode(node, "array", "0.2.0")
  }
  invisible(node)
}

.write_dataframe <- function(parent, name, frame, index) {
  group <- parent$create_group(name)
  .encode(group, "dataframe", "0.2.0")
  .set_attr(group, "_index", "_index")
  order <- names(frame)
  if (length(order)) {
    .set_attr(group, "column-order", order, array = TRUE)
  } else {
    # anndata writes an empty float64 array here; hdf5r cannot write a zero-length buffer, so the
    # attribute is created empty and never written
    group$create_attr("column-order", dtype = h5types$H5T_NATIVE_DOUBLE, space = H5S$new(dims = 0, maxdims = 0))
  }
  .write_vector(group, "_index", as.character(index), scalar = FALSE)
  for (column in order) .write_vector(group, column, frame[[column]], scalar = FALSE)
}

.write_uns <- function(group, values) {
  for (key in names(values)) {
    value <- values[[key]]
    if (is.list(value)) {
      child <- group$create_group(key)
      .encode(child, "dict", "0.1.0")
      .write_uns(child, value)
    } else {
      .write_vector(group, key, unclass(value), scalar = length(value) == 1 && !inherits(value, "AsIs"))
    }
  }
}

write_h5ad <- function(path, obs, var = NULL, uns = list(), X = NULL) {
  var <- if (is.null(var)) data.frame(row.names = character(0)) else var
  partial <- paste0(path, ".partial")
  file <- H5File$new(partial, mode = "w")
  closed <- FALSE
  on.exit(if (!closed) { file$close_all(); unlink(partial) }, add = TRUE)
  .set_attr(file, "encoding-type", "anndata")
  .set_attr(file, "encoding-version", "0.1.0")
  .write_dataframe(file, "obs", obs, rownames(obs))
  .write_dataframe(file, "var", var, rownames(var))
  if (!is.null(X)) {
    node <- file$create_dataset("X", robj = t(X), chunk_dims = NULL)
    .encode(node, "array", "0.2.0")
  }
  for (slot in c("layers", "obsm", "obsp", "varm", "varp")) .encode(file$create_group(slot), "dict", "0.1.0")
  uns_group <- file$create_group("uns")
  .encode(uns_group, "dict", "0.1.0")
  .write_uns(uns_group, uns)
  file$close_all()
  closed <- TRUE
  file.rename(partial, path)  # the output appears whole or not at all
  invisible(path)
}
