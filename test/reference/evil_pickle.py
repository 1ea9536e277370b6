"""Writes a torch.save zip file whose pickle calls os.system when unpickled by Python's pickle
(it would create MARKER). onestage must refuse it without running anything.
usage: evil_pickle.py OUT.pt MARKER"""
import os
import sys

import torch


class Evil:
    def __reduce__(self):
        return (os.system, ("touch " + sys.argv[2],))


torch.save({"conv1.weight": Evil()}, sys.argv[1])
