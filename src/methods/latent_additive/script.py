import sys

## VIASH START
par = {
    "input_train": "resources_test/simulated_grn/unseen_perturbation/train.h5ad",
    "input_test": "resources_test/simulated_grn/unseen_perturbation/test.h5ad",
    "input_prior": None,
    "output": "prediction.h5ad",
    "max_epochs": 200,
    "patience": 20,
    "latent_dim": 64,
    "hidden_dim": 256,
    "learning_rate": 0.001,
    "batch_size": 64,
    "n_gene_features": 32,
    "embedding_dropout": 0.5,
    "validation_share": 0.2,
    "seed": 0,
}
meta = {"name": "latent_additive", "resources_dir": "src/utils", "config": None, "cpus": None}
## VIASH END

sys.path.append(meta["resources_dir"])

import os  # noqa: E402

# OpenMP threads that busy-wait between the many small operations of this model make it an order of
# magnitude slower on a shared machine (measured: 2.6 s -> 34 s); set before torch starts its thread pool.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import time  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import scipy.sparse as sp  # noqa: E402

import baselines  # noqa: E402
from component_io import ComponentIO, fail, log, number_argument  # noqa: E402

NAME = meta.get("name") or "latent_additive"
DEFAULTS = {"max_epochs": 200, "patience": 20, "latent_dim": 64, "hidden_dim": 256, "learning_rate": 1e-3,
            "batch_size": 64, "n_gene_features": 32, "embedding_dropout": 0.5, "validation_share": 0.2, "seed": 0}
# Fewer training perturbations than this: no validation split, train for max_epochs.
MIN_PERTURBATIONS_FOR_VALIDATION = 5


def check_options() -> dict:
    options = {name: number_argument(par, name, default, int, low=0 if name in ("seed", "n_gene_features") else 1)
               for name, default in DEFAULTS.items() if isinstance(default, int)}
    options["learning_rate"] = number_argument(par, "learning_rate", DEFAULTS["learning_rate"], float, low=0.0)
    if options["learning_rate"] == 0:
        fail("--learning_rate is 0.0, expected a positive number")
    for name in ("embedding_dropout", "validation_share"):
        options[name] = number_argument(par, name, DEFAULTS[name], float, low=0.0, high=1.0, high_open=True)
    return options


def dense(matrix) -> np.ndarray:
    return np.asarray(matrix.toarray() if sp.issparse(matrix) else matrix, dtype=np.float64)


# --------------------------------------------------------------------------------------------------
# Gene features: what lets a target gene that was never perturbed in training get an embedding
# --------------------------------------------------------------------------------------------------

def expression_features(X, rows_of_condition, condition_targets, condition_context, controls, genes, k):
    """Genes x k PCA scores of the genes' responses across the training conditions.

    Column c of the genes x conditions matrix is condition c's replicate-mean profile minus its
    context's control. A gene's own perturbations are masked (set to 0) so that a gene perturbed in
    training and one that never was are described the same way: by how the gene responds when *other*
    genes are perturbed (co-regulated genes tend to have similar perturbation effects). Scaled so the
    first component has unit standard deviation.
    """
    position = {g: j for j, g in enumerate(genes)}
    Y = np.empty((len(genes), len(rows_of_condition)))
    for c, rows in enumerate(rows_of_condition):
        Y[:, c] = X[rows].mean(axis=0) - controls[condition_context[c]]
        for t in condition_targets[c]:
            if t in position:
                Y[position[t], c] = 0.0
    scores = baselines.gene_pca(Y, k)
    if scores.shape[1]:
        scale = scores[:, 0].std()
        scores = scores / (scale if scale > 0 else 1.0)
    return scores


def prior_features(prior, vocabulary):
    """Vocabulary x K standardised prior embedding (zeros for genes the prior lacks) and the count found."""
    if prior is None or prior.embedding is None:
        return np.zeros((len(vocabulary), 0)), 0
    E = prior.embedding - prior.embedding.mean(axis=0, keepdims=True)
    sd = E.std(axis=0, keepdims=True)
    E = E / np.where(sd > 0, sd, 1.0)
    out = np.zeros((len(vocabulary), E.shape[1]))
    found = 0
    for i, gene in enumerate(vocabulary):
        j = prior.position.get(gene)
        if j is not None:
            out[i] = E[j]
            found += 1
    return out, found


# --------------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------------

io = ComponentIO(par, meta)
train = io.read("input_train")
test = io.read("input_test")
try:  # before PyTorch is needed: a mismatched pair of files is wrong wherever the method can run
    baselines.check_same_split(train, test)
except baselines.InputError as error:
    fail(f"--input_train/--input_test: {error}")
options = check_options()
started = time.time()

try:
    import torch
except ImportError:
    # "not installed": the engine records it as its own status, not as a failure
    from vocabulary import NOT_INSTALLED_EXIT_CODE

    print("[not installed] latent_additive needs PyTorch: pip install -e '.[torch]' (CPU build: see the README)",
          file=sys.stderr, flush=True)
    sys.exit(NOT_INSTALLED_EXIT_CODE)

if meta.get("cpus"):
    torch.set_num_threads(int(meta["cpus"]))
torch.manual_seed(options["seed"])
# = torch.use_deterministic_algorithms(True), without the public function's import of the TorchInductor
# compiler configuration (seconds of start-up that an eager CPU model does not need)
_set_deterministic = getattr(torch._C, "_set_deterministic_algorithms", None)
if _set_deterministic is not None:
    _set_deterministic(True, warn_only=False)
else:
    torch.use_deterministic_algorithms(True)
rng = np.random.default_rng(options["seed"])

try:
    baselines.check_genes_match(train, test)
    genes = pd.Index(train.var_names.astype(str))
    position = {g: j for j, g in enumerate(genes)}
    row_targets = [baselines.targets_of(p) for p in train.obs["perturbation"].astype(str)]
    test_targets = baselines.test_targets(test)
    test_contexts = baselines.test_contexts(test)
except baselines.InputError as error:
    fail(f"--input_train/--input_test: {error}")

prior = baselines.read_prior_argument(par)
if prior is not None and prior.embedding is None:
    log(f"{NAME}: the prior has no varm['gene_embedding']; it is not used")

X = dense(train.X)
is_control = train.obs["is_control"].to_numpy().astype(bool)
contexts = baselines.contexts_of(train.obs)
control_rows: dict = {}
for r in np.flatnonzero(is_control):
    control_rows.setdefault(contexts[r], []).append(int(r))
if not control_rows:
    fail(f"--input_train file '{par['input_train']}': has no control profiles; the model encodes the control "
         "profile of each context")
control_rows = {c: np.array(rows) for c, rows in sorted(control_rows.items())}
controls = {c: X[rows].mean(axis=0) for c, rows in control_rows.items()}
missing = sorted({c for c in test_contexts if c not in controls})
if missing:
    fail(f"--input_train file '{par['input_train']}': no control profiles for cell_type '{missing[0][0]}', "
         f"condition '{missing[0][1]}', which test conditions need as the encoder's input")

# training samples: every perturbation replicate profile of a context with controls
sample_rows = np.array([r for r in np.flatnonzero(~is_control) if contexts[r] in controls], dtype=np.int64)
if len(sample_rows) == 0:
    fail(f"--input_train file '{par['input_train']}': has no perturbation profiles in a context with controls; "
         "there is nothing to learn perturbation effects from")
if (~is_control).sum() > len(sample_rows):
    log(f"{NAME}: {int((~is_control).sum()) - len(sample_rows)} perturbation profiles are in contexts without "
        "controls and are not used")

# training conditions (perturbation x context) for the gene features
condition_key = [(train.obs["perturbation"].iat[r], contexts[r]) for r in sample_rows]
condition_index: dict = {}
for r, key in zip(sample_rows, condition_key):
    condition_index.setdefault(key, []).append(int(r))
conditions = sorted(condition_index)
gene_features = expression_features(
    X, [np.array(condition_index[c]) for c in conditions], [baselines.targets_of(c[0]) for c in conditions],
    [c[1] for c in conditions], controls, genes, options["n_gene_features"])

# vocabulary of target genes: every target of training and test; each gets a feature row
vocabulary = sorted({t for r in sample_rows for t in row_targets[r]} | {t for ts in test_targets for t in ts})
vocab_index = {g: i for i, g in enumerate(vocabulary)}
features = np.zeros((len(vocabulary), gene_features.shape[1]))
measured = np.array([g in position for g in vocabulary])
for i, g in enumerate(vocabulary):
    if measured[i]:
        features[i] = gene_features[position[g]]
extra, n_in_prior = prior_features(prior, vocabulary)
if prior is not None and prior.embedding is not None:
    if n_in_prior == 0:
        fail(f"--input_prior file '{par['input_prior']}': none of its {len(prior.genes)} genes (e.g. "
             f"{', '.join(map(str, prior.genes[:3]))}) is a target gene of training or test (e.g. "
             f"{', '.join(vocabulary[:3])}); is it for another organism or gene naming?")
    log(f"{NAME}: prior gene embedding (K = {extra.shape[1]}) covers {n_in_prior} of {len(vocabulary)} target genes")
features = np.hstack([features, extra])
has_feature = measured | (np.abs(extra).sum(axis=1) > 0 if extra.shape[1] else np.zeros(len(vocabulary), bool))

seen = {t for r in sample_rows for t in row_targets[r]}
unseen_test = sorted({t for ts in test_targets for t in ts} - seen)
unseen_without = [g for g in unseen_test if not has_feature[vocab_index[g]]]
log(f"{NAME}: {len(vocabulary)} target genes ({len(seen)} perturbed in training); {len(unseen_test)} test "
    f"targets were never perturbed in training and get their embedding from the gene-feature map"
    + (f"; {len(unseen_without)} of them are neither measured nor in the prior (e.g. "
       f"{', '.join(unseen_without[:3])}) and get only the map's bias, a generic perturbation"
       if unseen_without else ""))

# --------------------------------------------------------------------------------------------------
# Validation split: a seeded share of the training perturbations (all their contexts and replicates)
# --------------------------------------------------------------------------------------------------

perturbations = sorted({train.obs["perturbation"].iat[r] for r in sample_rows})
sample_perturbation = train.obs["perturbation"].astype(str).to_numpy()[sample_rows]
if len(perturbations) >= MIN_PERTURBATIONS_FOR_VALIDATION and options["validation_share"] > 0:
    n_val = max(1, int(round(options["validation_share"] * len(perturbations))))
    held = set(np.array(perturbations)[rng.permutation(len(perturbations))[:n_val]])
    is_val = np.array([p in held for p in sample_perturbation])
else:
    n_val, is_val = 0, np.zeros(len(sample_rows), dtype=bool)
    log(f"{NAME}: {len(perturbations)} training perturbations, too few for a validation split; training for "
        f"--max_epochs {options['max_epochs']} without early stopping")

# --------------------------------------------------------------------------------------------------
# Model: x_hat = control + decoder(encoder(control) + sum of target embeddings)
# --------------------------------------------------------------------------------------------------

torch.set_default_dtype(torch.float32)
gene_mean = X[np.concatenate(list(control_rows.values()))].mean(axis=0)
gene_sd = np.maximum(X.std(axis=0), 1e-2)
max_targets = max([len(row_targets[r]) for r in sample_rows] + [len(t) for t in test_targets] + [1])
PAD = len(vocabulary)  # index of an all-zero embedding row


def target_matrix(target_lists) -> torch.Tensor:
    out = np.full((len(target_lists), max_targets), PAD, dtype=np.int64)
    for i, ts in enumerate(target_lists):
        for j, t in enumerate(ts):
            out[i, j] = vocab_index[t]
    return torch.from_numpy(out)


class LatentAdditive(torch.nn.Module):
    def __init__(self, n_genes, n_vocabulary, n_features, hidden, latent):
        super().__init__()
        self.encoder = torch.nn.Sequential(torch.nn.Linear(n_genes, hidden), torch.nn.ReLU(),
                                           torch.nn.Linear(hidden, latent))
        self.decoder = torch.nn.Sequential(torch.nn.Linear(latent, hidden), torch.nn.ReLU(),
                                           torch.nn.Linear(hidden, n_genes))
        # embedding of target gene v = feature_map(features[v]) + residual[v]; residual stays 0 for genes
        # never perturbed in training (they are never in a batch)
        self.feature_map = torch.nn.Linear(n_features, latent) if n_features else None
        self.generic = torch.nn.Parameter(torch.zeros(latent))
        self.residual = torch.nn.Parameter(torch.zeros(n_vocabulary, latent))

    def embeddings(self, features):
        base = self.generic.expand(features.shape[0], -1)
        if self.feature_map is not None:
            base = base + self.feature_map(features)
        return base

    def forward(self, control_std, control, targets, features, keep_residual=None):
        base = self.embeddings(features)                                    # V x L
        valid = (targets != PAD).unsqueeze(-1).float()                      # B x T x 1
        index = targets.clamp(max=PAD - 1)
        residual = self.residual[index]                                     # B x T x L
        if keep_residual is not None:
            residual = residual * keep_residual.unsqueeze(-1)
        perturbation = ((base[index] + residual) * valid).sum(dim=1)       # B x L
        return control + self.decoder(self.encoder(control_std) + perturbation)


class Adam:
    """Adam (Kingma & Ba 2015) with PyTorch's defaults (betas 0.9 / 0.999, eps 1e-8, no weight decay),
    the same update as `torch.optim.Adam`. Written out because torch.optim imports the TorchDynamo
    compiler on first use, seconds of start-up per run that an eager CPU model does not need."""

    def __init__(self, parameters, lr: float, betas=(0.9, 0.999), eps: float = 1e-8):
        self.parameters = [p for p in parameters if p.requires_grad]
        self.lr, self.betas, self.eps, self.t = float(lr), betas, eps, 0
        self.m = [torch.zeros_like(p) for p in self.parameters]
        self.v = [torch.zeros_like(p) for p in self.parameters]

    def zero_grad(self):
        for p in self.parameters:
            p.grad = None

    @torch.no_grad()
    def step(self):
        self.t += 1
        beta1, beta2 = self.betas
        step_size = self.lr / (1 - beta1 ** self.t)
        correction2 = (1 - beta2 ** self.t) ** 0.5
        for p, m, v in zip(self.parameters, self.m, self.v):
            if p.grad is None:
                continue
            m.mul_(beta1).add_(p.grad, alpha=1 - beta1)
            v.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
            p.addcdiv_(m, (v.sqrt() / correction2).add_(self.eps), value=-step_size)


def standardise(profiles: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(((profiles - gene_mean) / gene_sd).astype(np.float32))


model = LatentAdditive(len(genes), len(vocabulary), features.shape[1], options["hidden_dim"], options["latent_dim"])
optimizer = Adam(model.parameters(), lr=float(options["learning_rate"]))
feature_tensor = torch.from_numpy(features.astype(np.float32))
targets_all = target_matrix([row_targets[r] for r in sample_rows])
response_all = torch.from_numpy(X[sample_rows].astype(np.float32))
sample_context = [contexts[r] for r in sample_rows]
mean_control = np.vstack([controls[c] for c in sample_context])
fit_index = np.flatnonzero(~is_val)
val_index = np.flatnonzero(is_val)
val_inputs = (standardise(mean_control[val_index]), torch.from_numpy(mean_control[val_index].astype(np.float32)),
              targets_all[val_index], response_all[val_index])
context_control_rows = [control_rows[c] for c in sample_context]
generator = torch.Generator().manual_seed(options["seed"])

best_loss, best_state, best_epoch, epochs_run, stale = np.inf, None, 0, 0, 0
for epoch in range(1, options["max_epochs"] + 1):
    model.train()
    order = fit_index[torch.randperm(len(fit_index), generator=generator).numpy()]
    # input augmentation: each sample's control is one random control profile of its context
    pick = np.array([rows[rng.integers(len(rows))] for rows in (context_control_rows[i] for i in order)])
    control_np = X[pick]
    for start in range(0, len(order), options["batch_size"]):
        batch = order[start:start + options["batch_size"]]
        part = slice(start, start + len(batch))
        keep = (torch.rand(len(batch), max_targets, generator=generator) >= options["embedding_dropout"]).float()
        output = model(standardise(control_np[part]), torch.from_numpy(control_np[part].astype(np.float32)),
                       targets_all[batch], feature_tensor, keep)
        loss = torch.nn.functional.mse_loss(output, response_all[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    epochs_run = epoch
    if n_val:
        model.eval()
        with torch.no_grad():
            val_loss = float(torch.nn.functional.mse_loss(model(*val_inputs[:3], feature_tensor), val_inputs[3]))
        if val_loss < best_loss - 1e-7:
            best_loss, best_epoch, stale = val_loss, epoch, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            stale += 1
            if stale >= options["patience"]:
                break
if best_state is not None:
    model.load_state_dict(best_state)
else:
    best_epoch = epochs_run
log(f"{NAME}: trained {epochs_run} epochs on {len(fit_index)} profiles"
    + (f", best validation MSE {best_loss:.5f} at epoch {best_epoch} ({n_val} held-out perturbations)"
       if n_val else "") + f" in {time.time() - started:.1f} s")

# --------------------------------------------------------------------------------------------------
# Prediction from each test context's mean control
# --------------------------------------------------------------------------------------------------

test_control = np.vstack([controls[c] for c in test_contexts])
model.eval()
with torch.no_grad():
    predicted = model(standardise(test_control), torch.from_numpy(test_control.astype(np.float32)),
                      target_matrix(test_targets), feature_tensor).numpy().astype(np.float64)
# the target genes keep their revealed post-perturbation level where it is known
for i, (ts, text) in enumerate(zip(test_targets, test.obs["target_expression"].astype(str))):
    levels = text.split(baselines.TARGET_SEPARATOR)
    for t, level in zip(ts, levels if len(levels) == len(ts) else []):
        try:
            value = float(level)
        except ValueError:
            continue
        if t in position and np.isfinite(value):
            predicted[i, position[t]] = value
if not np.isfinite(predicted).all():
    fail(f"training diverged: {int((~np.isfinite(predicted)).sum())} non-finite predicted values; "
         "try a smaller --learning_rate")

# a condition whose every target is neither perturbed in training, measured nor in the prior gets only the
# map's bias: the model's generic perturbation, i.e. its training-mean effect (recorded as a fallback)
without = set(unseen_without)
fell_back = np.array([bool(ts) and all(t in without for t in ts) for ts in test_targets], dtype=bool)
output = baselines.prediction(train, test, predicted, NAME, fell_back, prior=prior)
output.uns["epochs_trained"] = int(epochs_run)
output.uns["best_epoch"] = int(best_epoch)
io.write("output", output)
