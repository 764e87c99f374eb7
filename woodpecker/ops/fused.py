"""Names of the ops that only fusion passes create (graph/passes/fuse_attention.py, fuse_group_norm.py),
in a module of their own so that loading a plan imports no pass."""

ATTENTION = "FusedAttention"
GROUP_NORM = "FusedGroupNorm"
