import sys

## VIASH START
par = {
    "input_train": "resources_test/norman/unseen_combination/train.h5ad",
    "input_test": "resources_test/norman/unseen_combination/test.h5ad",
    "input_train_cells": "resources_test/norman/unseen_combination/train_cells.h5ad",
    "input_prior": None,
    "output": "prediction.h5ad",
    "output_cells": None,
    "pretrained_model": None,
    "epochs": 15,
    "max_steps_per_epoch": 200,
    "batch_size": 64,
    "learning_rate": 0.0001,
    "embsize": 512,
    "nlayers": 12,
    "nhead": 8,
    "max_seq_len": 1536,
    "max_cells_per_condition": 200,
    "n_query_cells": 100,
    "seed": 0,
}
meta = {"name": "scgpt", "resources_dir": "src/methods/scgpt", "config": None, "cpus": None, "temp_dir": "/tmp"}
## VIASH END

# first on the path: the torchtext stand-in shipped with this component wins over a broken real one
sys.path.insert(0, meta["resources_dir"])

import json  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import scipy.sparse as sp  # noqa: E402

import baselines  # noqa: E402
from component_io import ComponentIO, fail, log, settings_from_environment  # noqa: E402

from vocabulary import NOT_INSTALLED_EXIT_CODE, TARGET_SEPARATOR  # noqa: E402

NAME = meta.get("name") or "scgpt"

SETTINGS_FROM_ENVIRONMENT = settings_from_environment(par, NAME)
try:
    import anndata as ad
    import torch
    from scgpt.loss import masked_mse_loss
    from scgpt.model import TransformerGenerator
    from scgpt.tokenizer.gene_tokenizer import GeneVocab
except ImportError as error:
    print(f"[not installed] {NAME}: needs scgpt 0.2.4 in its own environment (run with "
          f"PERTURBCAST_ISOLATED_ENVIRONMENTS unset or 1; {error})", file=sys.stderr, flush=True)
    raise SystemExit(NOT_INSTALLED_EXIT_CODE)

# the authors' perturbation tutorial: special tokens, padding, pert flag ids, no CLS/CCE/MVC/ECS objectives
PAD_TOKEN, SPECIALS, PAD_VALUE, PERT_PAD_ID = "<pad>", ["<pad>", "<cls>", "<eoc>"], 0, 2
seed = int(par.get("seed") or 0)
rng = np.random.default_rng(seed)
torch.manual_seed(seed)
if meta.get("cpus"):
    torch.set_num_threads(int(meta["cpus"]))

io = ComponentIO(par, meta)
train, test, _profiles, test_contexts, test_targets = baselines.read_method_inputs(io)
normalization_id = baselines.cell_normalization(train)  # how its profiles are made from cells
cells = io.read("input_train_cells", required_obs=("perturbation", "is_control", "cell_type", "condition"))
if list(cells.var_names) != list(train.var_names):
    fail(f"--input_train_cells file '{par['input_train_cells']}': its genes differ from --input_train's; "
         "expected the same genes in the same order")
X_cells = cells.X.tocsr() if sp.issparse(cells.X) else sp.csr_matrix(cells.X)
genes = [str(g) for g in cells.var_names]
cell_targets = [() if c else baselines.targets_of(p) for p, c in
                zip(cells.obs["perturbation"].astype(str), cells.obs["is_control"].astype(bool))]
context = (cells.obs["cell_type"].astype(str) + "|" + cells.obs["condition"].astype(str)).to_numpy()

# scGPT flags a perturbation on the target gene's own token: a target that is not measured gets an extra
# token (input value 0, its output ignored) so that its flag can be set
position = {g: i for i, g in enumerate(genes)}
extra = sorted({t for ts in list(cell_targets) + list(test_targets) for t in ts} - set(position))
tokens = genes + extra
position.update({g: len(genes) + i for i, g in enumerate(extra)})
n_tokens = len(tokens)

# ---------------------------------------------------------------- weights: random init, or a checkpoint
model_settings = {"embsize": par["embsize"], "nhead": par["nhead"], "d_hid": par["embsize"],
                  "nlayers": par["nlayers"]}
pretrained = par.get("pretrained_model")
if pretrained:
    # a checkpoint folder as the authors publish it (args.json, vocab.json, best_model.pt); they publish
    # it on Google Drive, which offers no checksummed direct download, so the user passes the folder
    missing = [f for f in ("args.json", "vocab.json", "best_model.pt") if not os.path.exists(os.path.join(pretrained, f))]
    if missing:
        fail(f"--pretrained_model folder '{pretrained}': has no {missing[0]} (expected scGPT's checkpoint folder: "
             "args.json, vocab.json, best_model.pt)")
    vocab = GeneVocab.from_file(os.path.join(pretrained, "vocab.json"))
    for token in SPECIALS:
        if token not in vocab:
            vocab.append_token(token)
    with open(os.path.join(pretrained, "args.json")) as handle:
        args = json.load(handle)
    model_settings = {"embsize": args["embsize"], "nhead": args["nheads"], "d_hid": args["d_hid"],
                      "nlayers": args["nlayers"]}
    new_tokens = [t for t in tokens if t not in vocab]
    for token in new_tokens:
        vocab.append_token(token)
    log(f"{NAME}: pretrained weights from {pretrained}; {len(new_tokens)} of {n_tokens} genes are not in its "
        "vocabulary and start from random embeddings")
else:
    vocab = GeneVocab(tokens, specials=SPECIALS)
    log(f"{NAME}: randomly initialised weights (no --pretrained_model given)")
vocab.set_default_index(vocab[PAD_TOKEN])
gene_ids = torch.tensor([vocab[t] for t in tokens], dtype=torch.long)

model = TransformerGenerator(
    len(vocab), model_settings["embsize"], model_settings["nhead"], model_settings["d_hid"],
    model_settings["nlayers"], nlayers_cls=3, n_cls=1, vocab=vocab, dropout=0.2, pad_token=PAD_TOKEN,
    pad_value=PAD_VALUE, pert_pad_id=PERT_PAD_ID, use_fast_transformer=False)
if pretrained:
    state = torch.load(os.path.join(pretrained, "best_model.pt"), map_location="cpu")
    own = model.state_dict()
    # the vocabulary grew by the new genes: their embedding rows stay random; shapes that match are loaded
    loaded = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    for k, v in state.items():
        if k in own and own[k].shape != v.shape and own[k].dim() == v.dim() and own[k].shape[1:] == v.shape[1:]:
            own[k][: v.shape[0]] = v
            loaded[k] = own[k]
    model.load_state_dict({**own, **loaded})
    log(f"{NAME}: loaded {len(loaded)} of {len(own)} parameter tensors from the checkpoint")


def expression(rows) -> np.ndarray:
    """Cells x tokens values; extra (unmeasured target) tokens are 0."""
    out = np.zeros((len(rows), n_tokens), dtype=np.float32)
    out[:, : len(genes)] = X_cells[rows].toarray()
    return out


def flags(target_lists) -> np.ndarray:
    out = np.zeros((len(target_lists), n_tokens), dtype=np.int64)
    for i, targets in enumerate(target_lists):
        out[i, [position[t] for t in targets]] = 1
    return out


# ---------------------------------------------------------------- training pairs, as GEARS' loader pairs them
# (the tutorial trains on GEARS' PertData cells: each perturbed cell's input is a random control cell of
# its population with the target flagged; a control cell is its own target)
labels = np.array([TARGET_SEPARATOR.join(t) for t in cell_targets], dtype=object)
chosen = []
for key, rows in pd.DataFrame({"l": labels, "c": context}).groupby(["l", "c"]).indices.items():
    chosen.append(rng.choice(rows, size=min(par["max_cells_per_condition"], len(rows)), replace=False))
chosen = np.concatenate(chosen)
controls_of = {c: np.flatnonzero((context == c) & (labels == "")) for c in set(context)}
if any(len(v) == 0 for v in controls_of.values()):
    fail(f"--input_train_cells: a context ({next(c for c, v in controls_of.items() if len(v) == 0)}) has no control cells")
inputs = np.array([r if labels[r] == "" else rng.choice(controls_of[context[r]]) for r in chosen])

optimizer = torch.optim.Adam(model.parameters(), lr=par["learning_rate"])
scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1, gamma=0.9)
started = time.perf_counter()
batch_size = par["batch_size"]
for epoch in range(par["epochs"]):
    model.train()
    order = rng.permutation(len(chosen))
    losses = []
    for step, start in enumerate(range(0, len(order), batch_size)):
        if step >= par["max_steps_per_epoch"]:
            break
        batch = order[start: start + batch_size]
        values = torch.from_numpy(expression(inputs[batch]))
        pert_flags = torch.from_numpy(flags([cell_targets[r] for r in chosen[batch]]))
        target = torch.from_numpy(expression(chosen[batch]))
        input_ids = torch.arange(n_tokens)
        if n_tokens > par["max_seq_len"]:
            # the tutorial samples max_seq_len genes per batch; the flagged targets always stay in
            flagged = torch.nonzero(pert_flags.any(0)).flatten()
            rest = input_ids[~torch.isin(input_ids, flagged)]
            pick = rest[torch.randperm(len(rest))[: max(par["max_seq_len"] - len(flagged), 0)]]
            input_ids = torch.sort(torch.cat([flagged, pick]))[0]
        mapped = gene_ids[input_ids].repeat(len(batch), 1)
        output = model(mapped, values[:, input_ids], pert_flags[:, input_ids],
                       src_key_padding_mask=torch.zeros_like(mapped, dtype=torch.bool),
                       CLS=False, CCE=False, MVC=False, ECS=False)
        measured = (input_ids < len(genes)).repeat(len(batch), 1)
        loss = masked_mse_loss(output["mlm_output"], target[:, input_ids], measured)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(float(loss))
    scheduler.step()
    log(f"{NAME}: epoch {epoch + 1}: mean training loss {np.mean(losses):.4f} ({time.perf_counter() - started:.0f} s)")

# ---------------------------------------------------------------- prediction
model.eval()
predicted, ids = [], []
# every gene is predicted at once, so a batch's attention grows with n_tokens squared: as many cells per
# batch as keep it at the training batches' size (64 cells x 2,000 genes took 18 GiB on Datlinger)
predict_batch = max(1, min(batch_size, int(batch_size * (par["max_seq_len"] / n_tokens) ** 2)))
with torch.no_grad():
    for obs_name, ctx, targets in zip(test.obs_names.astype(str), test_contexts, test_targets):
        controls = controls_of.get("|".join(ctx))
        if controls is None or len(controls) == 0:
            fail(f"--input_train_cells has no control cells of context {ctx}, which --input_test needs")
        rows = rng.choice(controls, size=min(par["n_query_cells"], len(controls)), replace=False)
        for start in range(0, len(rows), predict_batch):
            part = rows[start: start + predict_batch]
            mapped = gene_ids.repeat(len(part), 1)
            output = model(mapped, torch.from_numpy(expression(part)), torch.from_numpy(flags([targets] * len(part))),
                           src_key_padding_mask=torch.zeros_like(mapped, dtype=torch.bool),
                           CLS=False, CCE=False, MVC=False, ECS=False, do_sample=True)
            predicted.append(output["mlm_output"][:, : len(genes)].float().numpy())
        ids += [obs_name] * len(rows)
predicted = np.vstack(predicted)
if not np.isfinite(predicted).all():
    fail("scGPT's predictions hold non-finite values (training diverged); nothing written")
X, predicted, share_clipped, clipped = baselines.profiles_from_predicted_cells(
    predicted, ids, test.obs_names.astype(str), NAME, normalization_id)
if clipped:
    log(clipped)
# every target has a token (an unmeasured one its own, see `extra`): no condition falls back
outputs = {"output": baselines.prediction(train, test, X, NAME, np.zeros(test.n_obs, dtype=bool))}
outputs["output"].uns["pretrained"] = bool(pretrained)
outputs["output"].uns["share_clipped_at_zero"] = share_clipped
if SETTINGS_FROM_ENVIRONMENT:
    outputs["output"].uns["settings_from_environment"] = json.dumps(SETTINGS_FROM_ENVIRONMENT)
if par.get("output_cells"):
    outputs["output_cells"] = ad.AnnData(
        X=predicted, obs=pd.DataFrame({"condition_id": ids}, index=[f"pred{i}" for i in range(len(ids))]),
        var=pd.DataFrame(index=train.var_names.astype(str)), uns={k: outputs["output"].uns[k] for k in
                                                                  ("dataset_id", "task_id", "method_id")})
io.write_all(outputs)
