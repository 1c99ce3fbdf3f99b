"""A pure-Python stand-in for the part of torchtext that scGPT uses (its vocabulary class).

torchtext is discontinued; its last release (0.18) ships a compiled library built against torch 2.3 that
does not load with torch 2.13 (undefined symbol), and scGPT imports it only for `torchtext.vocab.Vocab`,
which `scgpt.tokenizer.GeneVocab` subclasses. This package provides that class with torchtext's
semantics (token <-> index lookups, default index, insert/append) and is put on the path of the scgpt
component only.
"""
