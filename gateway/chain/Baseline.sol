// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

/// @title Baseline: the cheapest useful anchor, for gas comparisons only.
/// @notice Stores one bytes32 in a mapping and emits one event, nothing
/// else: no access control, no sequence rule, no size. Benchmarks report
/// SurgeAnchor.anchor() gas relative to store() compiled with the same
/// settings and run on the same chain.
contract Baseline {
    mapping(uint256 => bytes32) public roots;

    event Stored(uint256 indexed key, bytes32 root);

    function store(uint256 key, bytes32 root) external {
        roots[key] = root;
        emit Stored(key, root);
    }
}
