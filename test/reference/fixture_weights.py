"""Writes the weights of a peer fixture as a torch.save'd state_dict, using the fixture's own
model_weights.make_state_dict (numpy's frozen legacy RandomState) with the keys, shapes and seed its
manifest records.  usage: fixture_weights.py FIXTURE_DIR SEED OUT.pt"""
import json
import os
import sys

import torch

fixture, seed, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
sys.path.insert(0, os.path.dirname(os.path.abspath(fixture)))
from model_weights import make_state_dict  # noqa: E402

with open(os.path.join(fixture, "manifest.json")) as f:
    keys = json.load(f)["meta"]["keys"]
torch.save(make_state_dict([(k, tuple(s)) for k, s in keys], seed), out)
