"""filterprune: structured filter pruning of ConvNets (Li et al., ICLR 2017)."""
