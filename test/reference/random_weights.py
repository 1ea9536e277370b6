"""Writes deterministic random weights for any RetinaNet state_dict layout as a torch.save'd state_dict, with the
peer fixtures' make_state_dict (test/fixtures/peers/model_weights.py: numpy's frozen legacy RandomState; BatchNorm
statistics and affine parameters away from their defaults, activations O(1)).
usage: random_weights.py KEYS.json SEED OUT.pt   (KEYS.json: [[key, [shape...]], ...])"""
import json
import os
import sys

import torch

keys_file, seed, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "peers"))
from model_weights import make_state_dict  # noqa: E402

with open(keys_file) as f:
    keys = json.load(f)
torch.save(make_state_dict([(k, tuple(s)) for k, s in keys], seed), out)
