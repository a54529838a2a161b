"""Zoo benchmark: published architectures (torchvision) and hand-written blocks of the
kinds torchvision lacks (token Linear + BN1d, RepVGG identity branches, ReduceMean
heads, pre-activation residuals, ConvMixer), each with every BN kept and scored
against its BN-deleted twin through the same tool. ``python -m bench.zoo``.
"""
