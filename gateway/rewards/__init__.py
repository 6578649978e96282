"""Reward epochs: attested capacity becomes per-owner amounts, a Merkle root on chain, and claims.

formula (the published formula), epoch (epoch files: inputs, outputs, root,
recomputation), closer (reads the store, writes epoch records), settler
(anchors epoch roots on SurgeRewards), statement (owners' statements and
reward proofs), chain (the SurgeRewards client), cli (`surge rewards`).
"""
